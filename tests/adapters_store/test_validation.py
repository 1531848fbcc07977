import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters_store.validation import (
    REGEX_TIME_LIMIT_S,
    AdapterValidationError,
    BaseModelShapes,
    validate_adapter,
)

MAX_RANK = 16


@pytest.fixture(scope="module")
def base(base_model_dir) -> BaseModelShapes:
    return BaseModelShapes(base_model_dir)


@pytest.fixture
def lora(good_lora, tmp_path) -> Path:
    """A private copy of the good adapter, free to break."""
    return Path(shutil.copytree(good_lora, tmp_path / "lora"))


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(folder: Path, edit) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def rejected(folder: Path, base, max_rank: int = MAX_RANK) -> AdapterValidationError:
    with pytest.raises(AdapterValidationError) as info:
        validate_adapter(folder, base, max_rank)
    assert str(info.value)
    return info.value


def test_base_model_shapes(base):
    assert base.linear["model.layers.0.self_attn.q_proj"] == (576, 576)
    assert base.linear["model.layers.29.self_attn.k_proj"] == (192, 576)
    assert base.linear["model.layers.3.mlp.down_proj"] == (576, 1536)
    assert "model.embed_tokens" not in base.linear
    assert base.leaf_names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_sharded_base_model(base_model_dir, base, tmp_path):
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    shutil.copy(base_model_dir / "config.json", shard_dir)
    tensors = load_file(base_model_dir / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, chunk in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in chunk}, shard_dir / shard)
        weight_map.update({n: shard for n in chunk})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert BaseModelShapes(shard_dir).linear == base.linear


def test_good_adapter_passes(good_lora, base):
    info = validate_adapter(good_lora, base, MAX_RANK)
    assert info.rank == 8
    assert info.alpha == 16.0
    assert info.target_modules == ["q_proj", "v_proj"]
    assert info.tensor_count == 30 * 2 * 2


def test_rank_too_high(good_lora, base):
    error = rejected(good_lora, base, max_rank=4)
    assert error.check == "rank_too_high"
    assert "rank 8 exceeds the engine's max LoRA rank 4" in str(error)


def test_layers_the_engine_does_not_wrap_refused(good_lora, base):
    assert validate_adapter(good_lora, base, MAX_RANK, ["q_proj", "v_proj", "o_proj"]).rank == 8
    with pytest.raises(AdapterValidationError) as caught:
        validate_adapter(good_lora, base, MAX_RANK, ["q_proj"])
    assert caught.value.check == "module_not_served" and "v_proj" in str(caught.value)


def test_target_module_the_base_lacks(lora, base):
    edit_config(lora, target_modules=["q_proj", "c_attn"])
    error = rejected(lora, base)
    assert error.check == "unknown_target_module" and "c_attn" in str(error)


def test_embedding_target_refused(lora, base):
    edit_config(lora, target_modules=["q_proj", "v_proj", "lm_head"])
    assert rejected(lora, base).check == "unsupported_target_module"


def test_wrong_lora_b_shape(lora, base):
    key = "base_model.model.model.layers.2.self_attn.v_proj.lora_B.weight"
    edit_tensors(lora, lambda t: t.update({key: torch.zeros(576, 8)}))  # v_proj outputs 192
    error = rejected(lora, base)
    assert error.check == "shape_mismatch" and "layers.2.self_attn.v_proj.lora_B" in str(error)


def test_tensor_of_a_module_the_base_lacks(lora, base):
    key = "base_model.model.model.layers.30.self_attn.q_proj.lora_A.weight"
    edit_tensors(lora, lambda t: t.update({key: torch.zeros(8, 576)}))
    assert rejected(lora, base).check == "unexpected_tensor"


def test_non_lora_tensor(lora, base):
    key = "base_model.model.model.layers.0.mlp.up_proj.weight"
    edit_tensors(lora, lambda t: t.update({key: torch.zeros(1536, 576)}))
    assert rejected(lora, base).check == "unexpected_tensor"


def test_integer_dtype_refused(lora, base):
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    edit_tensors(lora, lambda t: t.update({key: t[key].to(torch.int32)}))
    assert rejected(lora, base).check == "dtype"


def test_half_precision_accepted(lora, base):
    edit_tensors(lora, lambda t: t.update({k: v.to(torch.bfloat16) for k, v in t.items()}))
    assert validate_adapter(lora, base, MAX_RANK).rank == 8


def test_pickle_bin_refused(lora, base):
    (lora / "adapter_model.safetensors").rename(lora / "adapter_model.bin")
    assert rejected(lora, base).check == "pickle_refused"


def test_corrupt_safetensors(lora, base):
    path = lora / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert rejected(lora, base).check == "corrupt_safetensors"
    path.write_bytes(b"\xff" * 64)
    assert rejected(lora, base).check == "corrupt_safetensors"


def test_missing_config(lora, base):
    (lora / "adapter_config.json").unlink()
    assert rejected(lora, base).check == "missing_config"


def test_config_not_json(lora, base):
    (lora / "adapter_config.json").write_text("{not json")
    assert rejected(lora, base).check == "bad_config"


def test_config_not_lora(lora, base):
    edit_config(lora, peft_type="PREFIX_TUNING")
    assert rejected(lora, base).check == "not_lora"


def test_missing_weights(lora, base):
    (lora / "adapter_model.safetensors").unlink()
    assert rejected(lora, base).check == "missing_weights"


def test_modules_to_save_refused(lora, base):
    edit_config(lora, modules_to_save=["lm_head"])
    error = rejected(lora, base)
    assert error.check == "modules_to_save" and "vLLM" in str(error)


def test_rank_pattern_checked_against_max_rank(lora, base):
    edit_config(lora, rank_pattern={"q_proj": 32})
    assert rejected(lora, base).check == "rank_too_high"


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999", str(2**63), "[" * 5000 + "]" * 5000])
def test_config_read_strictly(lora, base, raw):
    """What json.loads takes but graft cannot keep (stored NaN, SQL overflow, RecursionError)."""
    path = lora / "adapter_config.json"
    path.write_text(path.read_text().replace('"lora_alpha":', f'"lora_x": {raw}, "lora_alpha":', 1))
    assert raw in path.read_text()
    assert rejected(lora, base).check == "bad_config"


def test_regex_target_modules_are_matched_as_peft_does(lora, base):
    edit_config(lora, target_modules=r".*\.(q_proj|v_proj)")
    assert validate_adapter(lora, base, MAX_RANK).target_modules == ["q_proj", "v_proj"]
    edit_config(lora, target_modules=r".*\.k_proj")  # the tensors are for modules it excludes
    assert rejected(lora, base).check == "unexpected_tensor"
    edit_config(lora, target_modules=r"([\w.]+)+Z")  # issue 17: hours under `re`; none match
    assert rejected(lora, base).check == "unknown_target_module"
    edit_config(lora, target_modules="(unclosed")
    assert rejected(lora, base).check == "bad_config"
    edit_config(lora, target_modules="q_proj|" * 200)
    assert rejected(lora, base).check == "bad_config"  # longer than MAX_REGEX_CHARS


def test_a_backtracking_target_modules_regex_is_cut_off(lora, base):
    edit_config(lora, target_modules=r"(\w|[a-z]|[a-q_]|.)*(?=\d{7})")
    started = time.monotonic()
    error = rejected(lora, base)
    assert error.check == "regex_too_slow" and "list the module names" in str(error)
    # Cut off, not run out: this pattern backtracks for hours. The bound is loose for a busy machine.
    assert time.monotonic() - started < REGEX_TIME_LIMIT_S + 60
