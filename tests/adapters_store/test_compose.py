"""adapters_store/compose.py on real PEFT LoRAs of the base model: each method's result against its
closed form on every base weight (the composed adapter loaded and merged by PEFT itself), and against
PEFT's own add_weighted_adapter on the base model where PEFT computes the same thing."""

import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from adapters_store import compose
from adapters_store.compose import Recipe, Source
from adapters_store.errors import Invalid
from adapters_store.validation import BaseModelShapes, validate_adapter
from tests.adapters_store.lora_factory import make_lora

MAX_RANK = 16


@pytest.fixture(scope="module")
def shapes(base_model_dir):
    return BaseModelShapes(base_model_dir)


@pytest.fixture(scope="module")
def loras(base_model_dir, tmp_path_factory):
    """Random (untrained, non-zero) LoRAs: two of rank 8 on different modules, one of rank 4."""
    make = lambda name, **kw: make_lora(base_model_dir, tmp_path_factory.mktemp(name), **kw)  # noqa: E731
    return {"qv8": make("qv8", rank=8, seed=1, target_modules=("q_proj", "v_proj")),
            "qk8": make("qk8", rank=8, seed=2, target_modules=("q_proj", "k_proj", "down_proj")),
            "qv4": make("qv4", rank=4, seed=3, target_modules=("q_proj", "v_proj"))}


def source(folder, weight: float, version: int = 1) -> Source:
    rank = json.loads((folder / "adapter_config.json").read_text())["r"]
    return Source(adapter=folder.name, version=version, sha256="0" * 64, folder=folder, weight=weight, rank=rank)


def deltas(folder) -> dict[str, torch.Tensor]:
    """module -> scaling * B @ A of a PEFT LoRA folder, read from its files."""
    config = json.loads((folder / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    tensors = load_file(folder / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key[len("base_model.model."):-len(".lora_A.weight")]
            out[module] = scaling * tensors[key.replace("lora_A", "lora_B")] @ a
    return out


def factors(folder) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(folder / "adapter_model.safetensors")
    return {key[len("base_model.model."):-len(".lora_A.weight")]: (a, tensors[key.replace("lora_A", "lora_B")],
                                                                    config["lora_alpha"] / config["r"])
            for key, a in tensors.items() if key.endswith(".lora_A.weight")}


def merged_weights(base_model_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """The base model's linear weights with the adapter merged in, as PEFT loads and merges it."""
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return {name[:-len(".weight")]: p.detach() for name, p in merged.named_parameters()}


@pytest.fixture(scope="module")
def base_weights(base_model_dir):
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    return {name[:-len(".weight")]: p.detach().clone() for name, p in base.named_parameters()}


def assert_on_base(base_model_dir, shapes, base_weights, composed, expected: dict[str, torch.Tensor]) -> None:
    """Every linear weight of base + composed adapter is the base weight + its expected delta (zero where
    the expectation names none)."""
    actual = merged_weights(base_model_dir, composed)
    for module in shapes.linear:
        want = base_weights[module] + expected.get(module, 0)
        torch.testing.assert_close(actual[module], want, rtol=1e-5, atol=1e-5, msg=module)
    assert set(expected) <= set(shapes.linear)


def test_cat_is_the_weighted_sum_of_the_deltas_on_every_module(base_model_dir, shapes, base_weights, loras,
                                                              tmp_path):
    sources = [source(loras["qv8"], 0.7), source(loras["qk8"], 1.3)]
    out = tmp_path / "cat"
    provenance = compose.compose(sources, Recipe("cat"), out, shapes, MAX_RANK)
    info = validate_adapter(out, shapes, MAX_RANK)
    assert info.rank == 16 and info.target_modules == ["down_proj", "k_proj", "q_proj", "v_proj"]
    d1, d2 = deltas(loras["qv8"]), deltas(loras["qk8"])
    expected = {m: 0.7 * d1.get(m, 0) + 1.3 * d2.get(m, 0) for m in {*d1, *d2}}
    assert len(expected) == 30 * 4 and all(torch.count_nonzero(d) for d in expected.values())
    assert_on_base(base_model_dir, shapes, base_weights, out, expected)
    assert provenance == {"compose": {"method": "cat", "sources": [
        {"adapter": s.adapter, "version": 1, "sha256": "0" * 64, "weight": s.weight} for s in sources]}}


def test_cat_of_different_ranks_and_svd_at_full_rank_are_exact(base_model_dir, shapes, base_weights, loras, tmp_path):
    sources = [source(loras["qv8"], 0.5), source(loras["qv4"], 2.0)]
    d1, d2 = deltas(loras["qv8"]), deltas(loras["qv4"])
    expected = {m: 0.5 * d1[m] + 2.0 * d2[m] for m in d1}
    compose.compose(sources, Recipe("cat"), tmp_path / "cat", shapes, MAX_RANK)
    assert validate_adapter(tmp_path / "cat", shapes, MAX_RANK).rank == 12
    assert_on_base(base_model_dir, shapes, base_weights, tmp_path / "cat", expected)
    # The summed delta has rank at most 12: an SVD cut at 12 keeps all of it.
    compose.compose(sources, Recipe("svd", svd_rank=12), tmp_path / "svd", shapes, MAX_RANK)
    assert validate_adapter(tmp_path / "svd", shapes, MAX_RANK).rank == 12
    assert_on_base(base_model_dir, shapes, base_weights, tmp_path / "svd", expected)


def test_linear_is_the_product_of_the_summed_factors(base_model_dir, shapes, base_weights, loras, tmp_path):
    """PEFT's `linear` sums A's and B's separately, each scaled by sqrt(weight * scaling): B A then holds
    cross terms. A module only one source has keeps that source's own weighted delta."""
    w = {"qv8": 0.6, "qk8": 1.5}
    sources = [source(loras[name], weight) for name, weight in w.items()]
    compose.compose(sources, Recipe("linear"), tmp_path / "linear", shapes, MAX_RANK)
    assert validate_adapter(tmp_path / "linear", shapes, MAX_RANK).rank == 8
    f = {name: factors(loras[name]) for name in w}
    expected = {}
    for module in {*f["qv8"], *f["qk8"]}:
        present = [(f[name][module], w[name]) for name in w if module in f[name]]
        b = sum((wt * s) ** 0.5 * b for (a, b, s), wt in present)
        a = sum((wt * s) ** 0.5 * a for (a, b, s), wt in present)
        expected[module] = b @ a
    assert_on_base(base_model_dir, shapes, base_weights, tmp_path / "linear", expected)


# Not `svd`: PEFT's takes a full SVD of every module's delta (minutes on 2 cores); ours is checked against
# the closed form above.
@pytest.mark.parametrize("method,params", [("cat", {}), ("linear", {}), ("ties", {"density": 0.5}),
                                           ("magnitude_prune", {"density": 0.3})])
def test_same_as_peft_add_weighted_adapter(base_model_dir, shapes, loras, tmp_path, method, params):
    """PEFT's own computation on the base model, adapter by adapter, gives the same deltas."""
    weights = {"qv8": 0.8, "qk8": 1.2}
    compose.compose([source(loras[n], w) for n, w in weights.items()], Recipe(method, **params),
                    tmp_path / "ours", shapes, MAX_RANK)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, loras["qv8"], adapter_name="qv8")
    model.load_adapter(loras["qk8"], adapter_name="qk8")
    model.add_weighted_adapter(list(weights), list(weights.values()), "theirs", combination_type=method, **params)
    model.load_adapter(tmp_path / "ours", adapter_name="ours")
    compared = 0
    for name, layer in model.named_modules():
        if hasattr(layer, "lora_A") and "theirs" in layer.lora_A:
            theirs = layer.get_delta_weight("theirs")
            ours = layer.get_delta_weight("ours") if "ours" in layer.lora_A else torch.zeros_like(theirs)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)
            compared += 1
    assert compared == 30 * 4


def test_dare_is_seeded(shapes, loras, tmp_path):
    sources = [source(loras["qv8"], 1.0), source(loras["qk8"], 1.0)]
    for folder, seed in (("a", 7), ("b", 7), ("c", 8)):
        compose.compose(sources, Recipe("dare_linear", density=0.5, seed=seed), tmp_path / folder, shapes, MAX_RANK)
    read = lambda f: (tmp_path / f / "adapter_model.safetensors").read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


@pytest.mark.parametrize("recipe,weights,code,words", [
    (Recipe("cat"), (1.0, 1.0, 1.0), "rank_too_high", "rank 20"),
    (Recipe("svd", svd_rank=17), (1.0, 1.0), "rank_too_high", "rank 17"),
    (Recipe("linear"), (1.0, 1.0, 1.0), "rank_mismatch", "ranks 8, 8, 4"),
    (Recipe("ties"), (1.0, 1.0), "invalid_parameter", "density"),
    (Recipe("cat", density=0.5), (1.0, 1.0), "invalid_parameter", "density"),
    (Recipe("blend"), (1.0, 1.0), "invalid_parameter", "blend"),
    (Recipe("cat"), (1.0, float("nan")), "invalid_parameter", "nan"),
    (Recipe("cat"), (1.0, -1.0), "invalid_parameter", "-1.0"),
    (Recipe("cat"), (1.0, 1e9), "invalid_parameter", "1000000000.0"),
])
def test_refused_before_anything_is_written(shapes, loras, tmp_path, recipe, weights, code, words):
    names = ("qv8", "qk8", "qv4")
    sources = [source(loras[n], w) for n, w in zip(names, weights)]
    with pytest.raises(Invalid) as refused:
        compose.compose(sources, recipe, tmp_path / "out", shapes, MAX_RANK)
    assert refused.value.code == code and words in refused.value.message, refused.value.message
    assert not (tmp_path / "out").exists()


def test_duplicates_and_too_many_sources_are_refused(shapes, loras, tmp_path):
    with pytest.raises(Invalid) as twice:
        compose.check(Recipe("cat"), [source(loras["qv4"], 1.0), source(loras["qv4"], 2.0)], MAX_RANK)
    assert twice.value.code == "duplicate_source"
    many = [source(loras["qv4"], 1.0, version=v) for v in range(1, compose.MAX_SOURCES + 2)]
    with pytest.raises(Invalid, match="1 to 8 sources"):
        compose.check(Recipe("svd"), many, MAX_RANK)


def test_sources_for_another_base_model_are_refused(shapes, loras, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((loras["qv8"] / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "org/Llama-3-8B"}))
    (other / "adapter_model.safetensors").write_bytes((loras["qv8"] / "adapter_model.safetensors").read_bytes())
    with pytest.raises(Invalid) as refused:
        compose.compose([source(loras["qk8"], 1.0), source(other, 1.0)], Recipe("cat"), tmp_path / "out", shapes,
                        MAX_RANK)
    assert refused.value.code == "base_mismatch" and "Llama-3-8B" in refused.value.message
