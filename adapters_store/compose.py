"""Composed adapter versions: stored LoRA versions combined into one new LoRA, from the adapter files alone.

The methods are PEFT's weighted combinations (`PeftModel.add_weighted_adapter`), computed here on
the LoRA tensors themselves (no base model): for a module with source i's LoRA A_i (r_i x in),
B_i (out x r_i), scaling s_i (lora_alpha / r, or / sqrt(r) with rsLoRA) and weight w_i,

- `cat` (exact): A = [w_1 s_1 A_1; w_2 s_2 A_2; …], B = [B_1 B_2 …], so B A = sum w_i s_i B_i A_i; the
  rank is the sum of the sources' ranks;
- `linear`, `ties`, `dare_linear`, `dare_ties`, `magnitude_prune` (equal ranks): A and B are merged
  separately, A = merge(sqrt(w_i s_i) A_i), B = merge(sqrt(w_i s_i) B_i) (`linear`: plain sums, so
  B A = (sum sqrt(w_i s_i) B_i)(sum sqrt(w_i s_i) A_i), cross terms included: an approximation);
- `svd` and the `*_svd` variants: the deltas w_i s_i B_i A_i are merged, then cut to `svd_rank`
  (default: the largest source rank) by a truncated SVD; exact when svd_rank reaches the deltas' rank.

The result has lora_alpha = r (scaling 1: the sources' scalings are in its tensors), one rank for
every module, and every module any source targets (a module a source lacks adds nothing from it).
DARE drops entries at random: the draw is seeded, so the same request gives the same bytes.
"""

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from adapters_store import strict_json
from adapters_store.errors import Invalid, NotFound
from adapters_store.validation import CONFIG_NAME, PEFT_PREFIX, WEIGHTS_NAME, BaseModelShapes

METHODS = ("cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
           "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd")
EQUAL_RANKS = frozenset({"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"})
SVD = frozenset(m for m in METHODS if m.endswith("svd"))
NEEDS_DENSITY = frozenset(m for m in METHODS if m not in ("cat", "linear", "svd"))
SIGNED = frozenset(m for m in METHODS if "ties" in m)  # take majority_sign_method
MAX_SOURCES = 8
MAX_WEIGHT = 16.0


@dataclass(frozen=True)
class Source:
    adapter: str  # stored (full) name
    version: int
    sha256: str
    folder: Path
    weight: float
    rank: int  # the stored version's rank (its largest module rank)


@dataclass(frozen=True)
class Recipe:
    method: str
    density: float | None = None
    svd_rank: int | None = None
    majority_sign_method: str | None = None
    seed: int | None = None

    def params(self) -> dict:
        """The method's parameters that apply to it, for the provenance (defaults filled in)."""
        out: dict = {}
        if self.method in NEEDS_DENSITY:
            out["density"] = self.density
        if self.method in SVD and self.svd_rank is not None:
            out["svd_rank"] = self.svd_rank
        if self.method in SIGNED:
            out["majority_sign_method"] = self.majority_sign_method or "total"
        if self.method.startswith("dare"):
            out["seed"] = self.seed or 0
        return out


def check(recipe: Recipe, sources: list[Source], max_rank: int) -> int:
    """Refuse what cannot be composed, before any file is read; returns the composed rank."""
    if recipe.method not in METHODS:
        raise Invalid(f"method {recipe.method!r} is not one of {', '.join(METHODS)}", param="compose.method")
    if not 1 <= len(sources) <= MAX_SOURCES:
        raise Invalid(f"compose takes 1 to {MAX_SOURCES} sources", param="compose.sources")
    seen = set()
    for i, source in enumerate(sources):
        if (source.adapter, source.version) in seen:
            raise Invalid(f"source {source.adapter}@{source.version} is named twice",
                          param=f"compose.sources[{i}]", code="duplicate_source")
        seen.add((source.adapter, source.version))
        if not (math.isfinite(source.weight) and 0 < source.weight <= MAX_WEIGHT):
            raise Invalid(f"weight {source.weight!r} of {source.adapter}@{source.version} is not in (0, {MAX_WEIGHT:g}]",
                          param=f"compose.sources[{i}].weight")
    if recipe.method in NEEDS_DENSITY:
        if recipe.density is None:
            raise Invalid(f"method {recipe.method} needs `density` (the share of entries kept, in (0, 1])",
                          param="compose.density")
    elif recipe.density is not None:
        raise Invalid(f"method {recipe.method} takes no `density`", param="compose.density")
    if recipe.density is not None and not (math.isfinite(recipe.density) and 0 < recipe.density <= 1):
        raise Invalid("density is in (0, 1]", param="compose.density")
    if recipe.svd_rank is not None and recipe.method not in SVD:
        raise Invalid(f"method {recipe.method} takes no `svd_rank` (the svd methods do)", param="compose.svd_rank")
    if recipe.majority_sign_method is not None and recipe.method not in SIGNED:
        raise Invalid(f"method {recipe.method} takes no `majority_sign_method` (the ties methods do)",
                      param="compose.majority_sign_method")
    if recipe.seed is not None and not recipe.method.startswith("dare"):
        raise Invalid(f"method {recipe.method} takes no `seed` (the dare methods do)", param="compose.seed")
    ranks = [s.rank for s in sources]
    if recipe.method in EQUAL_RANKS and len(set(ranks)) > 1:
        raise Invalid(f"method {recipe.method} needs sources of one rank; they have ranks "
                      f"{', '.join(map(str, ranks))} (`cat` and the svd methods take any)",
                      param="compose.method", code="rank_mismatch")
    rank = composed_rank(recipe, ranks)
    if rank > max_rank:
        param = "compose.svd_rank" if recipe.svd_rank is not None else "compose.sources"
        raise Invalid(f"the composed adapter's rank {rank} ({recipe.method} of ranks {', '.join(map(str, ranks))}) "
                      f"exceeds the engines' max LoRA rank {max_rank}", param=param, code="rank_too_high")
    return rank


def composed_rank(recipe: Recipe, ranks: list[int]) -> int:
    if recipe.method == "cat":
        return sum(ranks)
    if recipe.method in SVD:
        return recipe.svd_rank or max(ranks)
    return ranks[0]


@dataclass
class _Lora:
    """One source's LoRA, module by module: (A, B, scaling), every module padded to the source's rank."""
    config: dict
    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)


def compose(sources: list[Source], recipe: Recipe, out: Path, base: BaseModelShapes, max_rank: int) -> dict:
    """Write the composed LoRA (adapter_config.json + adapter_model.safetensors) into the empty folder
    `out`; returns its provenance. Runs in a worker thread (CPU-bound)."""
    check(recipe, sources, max_rank)
    loras = [_read(source, i, base) for i, source in enumerate(sources)]
    _check_same_base(loras, sources)
    # The ranks the files hold (the stored rows say the same; the files are what gets composed).
    check(recipe, [replace(s, rank=lora.rank) for s, lora in zip(sources, loras)], max_rank)
    rank = composed_rank(recipe, [lora.rank for lora in loras])
    modules = sorted(set().union(*(lora.modules for lora in loras)))
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        a, b = _combine(module, loras, [s.weight for s in sources], recipe, rank)
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise Invalid(f"composing gives non-finite values in {module}", param="compose.sources",
                          code="not_finite")
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / WEIGHTS_NAME, metadata={"format": "pt"})
    config = _config(loras[0].config, rank, _target_modules(modules, base))
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        with open(out / name, "rb") as f:
            os.fsync(f.fileno())
    return provenance(sources, recipe)


def provenance(sources: list[Source], recipe: Recipe) -> dict:
    return {"compose": {"method": recipe.method, **recipe.params(),
                        "sources": [{"adapter": s.adapter, "version": s.version, "sha256": s.sha256,
                                     "weight": s.weight} for s in sources]}}


def _read(source: Source, index: int, base: BaseModelShapes) -> _Lora:
    param = f"compose.sources[{index}]"
    try:
        config = strict_json.loads((source.folder / CONFIG_NAME).read_bytes())
        weights = load_file(source.folder / WEIGHTS_NAME)
    except FileNotFoundError:
        raise NotFound(f"adapter version {source.adapter}@{source.version} was deleted while composing",
                       param=param, code="adapter_not_found") from None
    except (ValueError, SafetensorError) as exc:
        raise Invalid(f"{source.adapter}@{source.version} cannot be read: {exc}", param=param) from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise Invalid(f"{source.adapter}@{source.version} is not a LoRA", param=param)
    if config.get("fan_in_fan_out") or config.get("use_dora"):
        raise Invalid(f"{source.adapter}@{source.version}: fan_in_fan_out and DoRA adapters cannot be composed",
                      param=param, code="unsupported_option")
    from peft.utils.other import get_pattern_key  # PEFT's own pattern matching (PEFT loads slowly)

    alpha_pattern = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        if not (key.startswith(PEFT_PREFIX) and key.endswith((".lora_A.weight", ".lora_B.weight"))):
            raise Invalid(f"{source.adapter}@{source.version} holds tensor {key!r}", param=param)
        module, part = key[len(PEFT_PREFIX):-len(".weight")].rsplit(".", 1)
        pairs.setdefault(module, {})[part] = tensor.to(torch.float32)
    rank = max([int(config.get("r", 1)), *(p["lora_A"].shape[0] for p in pairs.values() if "lora_A" in p)])
    lora = _Lora(config=config, rank=rank)
    for module, pair in pairs.items():
        if set(pair) != {"lora_A", "lora_B"} or module not in base.linear:
            raise Invalid(f"{source.adapter}@{source.version}: module {module} is not a LoRA pair of the base model",
                          param=param)
        a, b = pair["lora_A"], pair["lora_B"]
        r = a.shape[0]
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config.get("lora_alpha", 8))
        scaling = float(alpha) / (math.sqrt(r) if rslora else r)
        pad = rank - r  # zero rows of A and columns of B: the same delta at the source's rank
        lora.modules[module] = (torch.nn.functional.pad(a, (0, 0, 0, pad)),
                                torch.nn.functional.pad(b, (0, pad)), scaling)
    return lora


def _check_same_base(loras: list[_Lora], sources: list[Source]) -> None:
    """Every stored version was validated against this gateway's base model; a source whose config
    names another model (by its folder or hub name) is refused all the same."""
    names = {}
    for lora, source in zip(loras, sources):
        named = lora.config.get("base_model_name_or_path")
        if isinstance(named, str) and named.strip("/"):
            names[f"{source.adapter}@{source.version}"] = PurePosixPath(named.rstrip("/")).name
    if len(set(names.values())) > 1:
        listed = ", ".join(f"{ref}: {model}" for ref, model in names.items())
        raise Invalid(f"the sources were made for different base models ({listed})", param="compose.sources",
                      code="base_mismatch")


def _combine(module: str, loras: list[_Lora], weights: list[float], recipe: Recipe, rank: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    present = [(lora.modules[module], w, lora.rank) for lora, w in zip(loras, weights) if module in lora.modules]
    (a0, b0, _), _, _ = present[0]
    if recipe.method == "cat":
        a_parts, b_parts = [], []
        for lora, w in zip(loras, weights):  # a source without the module: zeros in its slot
            if module in lora.modules:
                a, b, s = lora.modules[module]
                a_parts.append(a * (w * s))
                b_parts.append(b)
            else:
                a_parts.append(a0.new_zeros((lora.rank, a0.shape[1])))
                b_parts.append(b0.new_zeros((b0.shape[0], lora.rank)))
        return torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1)
    from peft.utils import merge_utils

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed or 0)
        if recipe.method == "svd":
            u, singular, vh = _low_rank_svd(present)
        elif recipe.method in SVD:
            deltas = [b @ a * s for (a, b, s), _, _ in present]
            factors = torch.tensor([w for _, w, _ in present])
            delta = _merge(merge_utils, recipe.method.removesuffix("_svd"), deltas, factors, recipe)
            u, singular, vh = torch.linalg.svd(delta, full_matrices=False)
        if recipe.method in SVD:
            keep = min(rank, singular.shape[0])
            a = vh[:keep]
            b = u[:, :keep] * singular[:keep]
            if keep < rank:  # a tiny module: pad to the one rank of the adapter
                a, b = torch.nn.functional.pad(a, (0, 0, 0, rank - keep)), torch.nn.functional.pad(b, (0, rank - keep))
            return a, b
        factors = torch.tensor([math.sqrt(w * s) for (_, _, s), w, _ in present])
        a = _merge(merge_utils, recipe.method, [a for (a, _, _), _, _ in present], factors, recipe)
        b = _merge(merge_utils, recipe.method, [b for (_, b, _), _, _ in present], factors, recipe)
        return a, b


def _low_rank_svd(present) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SVD of sum w_i s_i B_i A_i from its factors, without forming the (out x in) sum: it is
    B A with B = [B_1 B_2 …], A = [w_1 s_1 A_1; …]; with B = Qb Rb and A^T = Qa Ra, B A = Qb (Rb Ra^T) Qa^T,
    and the SVD of the small middle matrix gives the whole one (exactly, as PEFT's `svd` does)."""
    b = torch.cat([b for (_, b, _), _, _ in present], dim=1)
    a = torch.cat([a * (w * s) for (a, _, s), w, _ in present], dim=0)
    qb, rb = torch.linalg.qr(b)
    qa, ra = torch.linalg.qr(a.T)
    u, singular, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, singular, vh @ qa.T


def _merge(merge_utils, method: str, tensors: list[torch.Tensor], factors: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    sign = recipe.majority_sign_method or "total"
    if method in ("linear", "svd"):
        return merge_utils.task_arithmetic(tensors, factors)
    if method == "ties":
        return merge_utils.ties(tensors, factors, recipe.density, sign)
    if method == "dare_linear":
        return merge_utils.dare_linear(tensors, factors, recipe.density)
    if method == "dare_ties":
        return merge_utils.dare_ties(tensors, factors, recipe.density, sign)
    if method == "magnitude_prune":
        return merge_utils.magnitude_prune(tensors, factors, recipe.density)
    raise Invalid(f"method {method!r} is not one of {', '.join(METHODS)}", param="compose.method")


def _target_modules(modules: list[str], base: BaseModelShapes) -> list[str]:
    """The leaf names (`q_proj`, …) when the adapter covers every base module of those leaves, as
    adapters usually do; otherwise the full module paths, so no module without tensors is targeted."""
    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
    covered = {m for leaf in leaves for m in base.modules_matching(leaf)}
    return leaves if covered == set(modules) else sorted(modules)


def _config(first: dict, rank: int, target_modules: list[str]) -> dict:
    config = {key: value for key, value in first.items()
              if key in ("task_type", "base_model_name_or_path", "peft_version", "revision", "inference_mode")}
    config.update({"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": target_modules,
                   "lora_dropout": 0.0, "bias": "none", "use_rslora": False, "use_dora": False,
                   "fan_in_fan_out": False, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
                   "init_lora_weights": True})
    return config
