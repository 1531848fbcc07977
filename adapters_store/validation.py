"""Validate a PEFT LoRA adapter folder against the base model before it is stored or loaded.

Only tensor headers are read (safetensors.safe_open), never tensor data, and nothing is
ever unpickled.
"""

import json
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import regex
from safetensors import SafetensorError, safe_open

from adapters_store import strict_json
from adapters_store.errors import Invalid

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
ALLOWED_DTYPES = {"F16", "BF16", "F32"}
# Embeddings and the output head are not linear layers vLLM can hot-load a LoRA into.
NON_LINEAR_LEAVES = {"embed_tokens", "lm_head", "wte", "wpe", "word_embeddings", "embed_in", "embed_out"}
PEFT_PREFIX = "base_model.model."
# A target_modules regex (PEFT full-matches it against module paths) comes from the uploader:
# matched by the `regex` module, which takes a timeout (backtracking can run for hours).
MAX_REGEX_CHARS = 1000
REGEX_TIME_LIMIT_S = 1.0  # for the whole base model's module list
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>A|B)\.weight$")


class AdapterValidationError(Invalid):
    def __init__(self, check: str, message: str):
        super().__init__(message, param="files", code=check)
        self.check = check


@dataclass
class AdapterInfo:
    rank: int
    alpha: float
    target_modules: list[str]
    tensor_count: int
    base_model_name_or_path: str | None


class BaseModelShapes:
    """(out_features, in_features) of every linear module of a Hugging Face base model."""

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"{model_dir} has no config.json")
        self.config = json.loads(config_path.read_text())
        self.linear: dict[str, tuple[int, int]] = {}
        for shard in _weight_files(model_dir):
            with safe_open(shard, framework="numpy") as f:
                for name in f.keys():
                    if not name.endswith(".weight"):
                        continue
                    shape = f.get_slice(name).get_shape()
                    module = name[: -len(".weight")]
                    if len(shape) == 2 and module.rsplit(".", 1)[-1] not in NON_LINEAR_LEAVES:
                        self.linear[module] = (int(shape[0]), int(shape[1]))
        if not self.linear:
            raise ValueError(f"{model_dir} has no linear weights")
        self.leaf_names = sorted({m.rsplit(".", 1)[-1] for m in self.linear})

    def modules_matching(self, target: str) -> list[str]:
        """Module paths PEFT would match for one list entry of target_modules."""
        return [m for m in self.linear if m == target or m.endswith("." + target)]


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise ValueError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")


def validate_adapter(folder: Path, base: BaseModelShapes, max_rank: int,
                     served_modules: Collection[str] = ()) -> AdapterInfo:
    """served_modules: the layers the engine wraps with LoRA (empty: all it supports)."""
    folder = Path(folder)
    pickles = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise AdapterValidationError(
            "pickle_refused",
            f"{', '.join(pickles)}: pickle files are refused; save the adapter with "
            "safe_serialization=True (adapter_model.safetensors)",
        )
    config = _read_config(folder)
    rank = _check_config(config, max_rank)
    targeted = _targeted_modules(config["target_modules"], base)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterValidationError("missing_weights", f"{WEIGHTS_NAME} is missing")
    headers = _read_headers(weights)
    # With a rank_pattern, each module's rank comes from its tensors (still bounded by max_rank).
    exact_rank = None if config.get("rank_pattern") else rank
    leaves = _check_tensors(headers, base, targeted, exact_rank, max_rank)
    unserved = sorted(set(leaves) - set(served_modules)) if served_modules else []
    if unserved:
        raise AdapterValidationError(
            "module_not_served", f"the engine applies LoRA to {', '.join(sorted(served_modules))} only; "
            f"this adapter also targets {', '.join(unserved)}")
    base_name = config.get("base_model_name_or_path")
    return AdapterInfo(
        rank=max([rank, *_pattern_ranks(config.get("rank_pattern"))]),
        alpha=float(config.get("lora_alpha", 8)),
        target_modules=leaves,
        tensor_count=len(headers),
        base_model_name_or_path=base_name if isinstance(base_name, str) else None,
    )


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterValidationError("missing_config", f"{CONFIG_NAME} is missing")
    try:
        config = strict_json.loads(path.read_bytes())
    except ValueError as exc:
        raise AdapterValidationError("bad_config", f"{CONFIG_NAME} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise AdapterValidationError("bad_config", f"{CONFIG_NAME} must be a JSON object")
    return config


def _check_config(config: dict, max_rank: int) -> int:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterValidationError("not_lora", f"peft_type is {peft_type!r}, only 'LORA' adapters are served")
    if config.get("modules_to_save"):
        raise AdapterValidationError(
            "modules_to_save",
            f"modules_to_save {config['modules_to_save']} is set: vLLM cannot hot-load fully "
            "trained modules, only LoRA deltas",
        )
    if config.get("use_dora"):
        raise AdapterValidationError("unsupported_option", "DoRA adapters (use_dora) cannot be served by vLLM")
    if config.get("bias", "none") != "none":
        raise AdapterValidationError("unsupported_option", f"bias={config['bias']!r} is not supported, only 'none'")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AdapterValidationError("bad_config", f"lora_alpha must be a number, got {alpha!r}")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AdapterValidationError("bad_config", f"r must be a positive integer, got {rank!r}")
    ranks = [rank, *_pattern_ranks(config.get("rank_pattern"))]
    if max(ranks) > max_rank:
        raise AdapterValidationError(
            "rank_too_high", f"rank {max(ranks)} exceeds the engine's max LoRA rank {max_rank}"
        )
    if "target_modules" not in config or not config["target_modules"]:
        raise AdapterValidationError("bad_config", "target_modules is missing")
    return rank


def _pattern_ranks(pattern) -> list[int]:
    if not pattern:
        return []
    if not isinstance(pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pattern.values()
    ):
        raise AdapterValidationError("bad_config", "rank_pattern must map module patterns to positive integers")
    return list(pattern.values())


def _targeted_modules(targets, base: BaseModelShapes) -> set[str]:
    """Module paths of the base model that target_modules selects, as PEFT matches them."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return set(base.linear)
        selected = _regex_targets(targets, base)
        if not selected:
            raise AdapterValidationError(
                "unknown_target_module",
                f"target_modules {targets!r} matches no linear module of the base model "
                f"(it has {', '.join(base.leaf_names)})",
            )
        return selected
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise AdapterValidationError("bad_config", "target_modules must be a list of names or a regex string")
    selected: set[str] = set()
    for target in targets:
        if target.rsplit(".", 1)[-1] in NON_LINEAR_LEAVES:
            raise AdapterValidationError(
                "unsupported_target_module",
                f"target module {target!r} is an embedding or output head; vLLM hot-loads "
                "LoRA only into linear layers",
            )
        matched = base.modules_matching(target)
        if not matched:
            raise AdapterValidationError(
                "unknown_target_module",
                f"target module {target!r} does not exist in the base model "
                f"(it has {', '.join(base.leaf_names)})",
            )
        selected.update(matched)
    return selected


def _regex_targets(pattern: str, base: BaseModelShapes) -> set[str]:
    if len(pattern) > MAX_REGEX_CHARS:
        raise AdapterValidationError(
            "bad_config", f"target_modules regex is longer than {MAX_REGEX_CHARS} characters; "
            "list the module names instead")
    try:
        compiled = regex.compile(pattern)
    except (regex.error, RecursionError, OverflowError) as exc:
        raise AdapterValidationError("bad_config", f"target_modules regex is invalid: {exc}") from None
    deadline = time.monotonic() + REGEX_TIME_LIMIT_S
    try:
        return {m for m in base.linear
                if compiled.fullmatch(m, timeout=max(deadline - time.monotonic(), 0.001))}
    except TimeoutError:
        raise AdapterValidationError(
            "regex_too_slow", f"target_modules regex {pattern!r} takes more than {REGEX_TIME_LIMIT_S:g} s "
            "to match the base model's module names; simplify it or list the module names "
            '(e.g. ["q_proj", "v_proj"])') from None


def _read_headers(weights: Path) -> dict[str, tuple[str, list[int]]]:
    try:
        with safe_open(weights, framework="numpy") as f:
            return {
                name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape()))
                for name in f.keys()
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterValidationError(
            "corrupt_safetensors", f"{WEIGHTS_NAME} is not a readable safetensors file: {exc}"
        ) from None


def _check_tensors(headers, base: BaseModelShapes, targeted: set[str], rank: int | None, max_rank: int) -> list[str]:
    if not headers:
        raise AdapterValidationError("missing_weights", f"{WEIGHTS_NAME} holds no tensors")
    parts: dict[str, dict[str, list[int]]] = {}
    for name, (dtype, shape) in sorted(headers.items()):
        match = _LORA_KEY.match(name)
        if not match:
            raise AdapterValidationError(
                "unexpected_tensor",
                f"tensor {name!r} is not a LoRA weight 'base_model.model.<module>.lora_A/B.weight'",
            )
        module = match["module"]
        if module not in base.linear:
            raise AdapterValidationError(
                "unexpected_tensor", f"tensor {name!r} is for module {module!r}, which the base model lacks"
            )
        if module not in targeted:
            raise AdapterValidationError(
                "unexpected_tensor", f"tensor {name!r} is for module {module!r}, which target_modules excludes"
            )
        if dtype not in ALLOWED_DTYPES:
            raise AdapterValidationError(
                "dtype", f"tensor {name!r} has dtype {dtype}; only float16, bfloat16 and float32 are accepted"
            )
        parts.setdefault(module, {})[match["part"]] = shape
    for module, pair in sorted(parts.items()):
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise AdapterValidationError("missing_weights", f"module {module!r} has no {missing} tensor")
        out_features, in_features = base.linear[module]
        expected_rank = rank or (pair["A"][0] if len(pair["A"]) == 2 else 0)
        if expected_rank > max_rank:
            raise AdapterValidationError(
                "rank_too_high", f"module {module!r} has rank {expected_rank}, above the engine's max LoRA rank {max_rank}"
            )
        expected = {"A": [expected_rank, in_features], "B": [out_features, expected_rank]}
        for part in ("A", "B"):
            if pair[part] != expected[part] or expected_rank < 1:
                raise AdapterValidationError(
                    "shape_mismatch",
                    f"{PEFT_PREFIX}{module}.lora_{part}.weight has shape {tuple(pair[part])}, "
                    f"expected {tuple(expected[part])} for rank {expected_rank} on a "
                    f"{out_features}x{in_features} base weight",
                )
    return sorted({m.rsplit(".", 1)[-1] for m in parts})
