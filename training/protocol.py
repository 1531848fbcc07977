"""The trainer's wire protocol: the config file it reads and the events it prints.

Config (a JSON object; only the first three keys are required):

    base_model       folder of the base model (safetensors + tokenizer)
    examples         JSONL file, one example a line: {"prompt": str, "completion": str}
                     (loss on the completion tokens only; the tokenizer's eos token is appended to
                     the completion) or {"text": str} (causal-LM loss on every token)
    out_dir          where the adapter goes; must not exist or be an empty folder
    rank 8, alpha 16, target_modules [q,k,v,o,gate,up,down]_proj, epochs 1, learning_rate 2e-4,
    batch_size 4, max_length 1024, threads 2, seed 0,
    precision "auto" | "fp32" | "bf16"   ("auto": see training.device)
    checkpoint_dir null                  a folder for checkpoint.pt, or null for none
    checkpoint_every 50                  steps between checkpoints (also one at each epoch end)
    resume false                         continue from checkpoint_dir's checkpoint if there is one
    warmup_ratio 0.05                    share of the steps with linear warm-up (then linear decay)

Unknown keys are an error (a typo should not silently train with defaults).

Events, one JSON object a line on stdout (anything else goes to stderr):

    {"event": "start", "steps": N, "examples": M, "device": "cpu"|"cuda", "precision": "fp32"|"bf16",
     "step": first step (0, or the checkpoint's step on resume), "threads": T}
    {"event": "progress", "step": s, "steps": N, "epoch": e, "loss": x, "tokens": t,
     "tokens_per_s": r, "eta_s": z, "lr": l}                      (step 1, the last step, and at most
                                                                   one a second in between)
    {"event": "checkpoint", "step": s}                             (after each checkpoint is written)
    {"event": "done", "loss_curve": [...], "loss_curve_every": k, "final_loss": x, "tokens": t,
     "seconds": s, "tokens_per_s": r, "steps": N, "out_dir": path}
    {"event": "error", "message": str}                             exit code 1
    {"event": "cancelled"}                                         exit code 143 (SIGTERM or SIGINT)
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CANCELLED = 143

# The one list of a Llama-style model's projection names: the LoRA targets of a training by default.
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """The config file is not a valid training config."""


class ExamplesError(ValueError):
    """The examples file cannot be read as training examples."""


class Cancelled(Exception):
    """Raised inside `train` when its should_stop callback says so."""


@dataclass(frozen=True)
class TrainConfig:
    base_model: str
    examples: str
    out_dir: str
    rank: int = 8
    alpha: float = 16
    target_modules: list[str] = field(default_factory=lambda: list(ALL_PROJECTIONS))
    epochs: int = 1
    learning_rate: float = 2e-4
    batch_size: int = 4
    max_length: int = 1024
    threads: int = 2
    seed: int = 0
    precision: str = "auto"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    resume: bool = False
    warmup_ratio: float = 0.05

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError("the config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        for key in ("base_model", "examples", "out_dir"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise ConfigError(f"{key} must be a non-empty string (a path)")
        values = dict(data)
        if values.get("checkpoint_dir") == "":
            values["checkpoint_dir"] = None
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        return cls.from_dict(data)

    def __post_init__(self) -> None:
        """Every config is checked where it is built: the gateway's (service/training.py) as the trainer's."""
        self._check()

    def _check(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("rank", "epochs", "batch_size", "max_length", "threads", "checkpoint_every"):
            positive_int(name)
        if self.max_length < 2:
            raise ConfigError("max_length must be at least 2")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        for name in ("alpha", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.warmup_ratio, bool) or not isinstance(self.warmup_ratio, (int, float)) \
                or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if not isinstance(self.target_modules, list) or not self.target_modules \
                or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError("target_modules must be a non-empty list of module names")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, str):
            raise ConfigError("checkpoint_dir must be a path or null")
        if not isinstance(self.resume, bool):
            raise ConfigError("resume must be true or false")

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self, examples_sha256: str) -> str:
        """What a checkpoint must match to be resumed: everything that changes the training's
        numbers (not threads, paths of outputs, or checkpoint cadence)."""
        keys = ("base_model", "rank", "alpha", "target_modules", "epochs", "learning_rate",
                "batch_size", "max_length", "seed", "precision", "warmup_ratio")
        payload = {k: getattr(self, k) for k in keys}
        payload["base_model"] = str(Path(self.base_model).resolve())
        payload["examples_sha256"] = examples_sha256
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


TRAINER = [sys.executable, "-m", "training.run"]  # + the config's path


def event_line(event: dict) -> str:
    """One event as the single line the trainer prints (no NaN/Infinity: JSON has none)."""
    return json.dumps(_finite(event), separators=(",", ":"), allow_nan=False)


def parse_event(line: bytes) -> dict:
    """One line of the trainer's stdout as an event; {} for anything else."""
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
