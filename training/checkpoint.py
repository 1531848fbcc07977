"""Checkpoints for resuming a training: one file, checkpoint_dir/checkpoint.pt, replaced atomically
(written to a temporary file in the same folder, fsynced, os.replace'd, folder fsynced), so a
killed process leaves either the previous checkpoint or the new one.

Content: {"format": 1, "fingerprint": TrainConfig.fingerprint(...), "step": completed steps,
"lora": the LoRA state dict (PEFT's get_peft_model_state_dict), "optimizer": AdamW's state dict,
"loss_curve": per-step losses so far, "tokens": tokens trained so far, "seconds": training
seconds so far}. Loaded with torch.load(weights_only=True).
"""

from __future__ import annotations

import os
from pathlib import Path

from training.durable import fsync_dir

FILE_NAME = "checkpoint.pt"
FORMAT = 1


def path_in(checkpoint_dir: str | Path) -> Path:
    return Path(checkpoint_dir) / FILE_NAME


def save(checkpoint_dir: str | Path, state: dict) -> Path:
    import torch

    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FILE_NAME
    tmp = folder / f".{FILE_NAME}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    fsync_dir(folder)
    return target


def load(checkpoint_dir: str | Path) -> dict | None:
    """The checkpoint, or None when there is none yet."""
    import torch

    target = path_in(checkpoint_dir)
    if not target.is_file():
        return None
    state = torch.load(target, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{target} has checkpoint format {state.get('format')!r}, expected {FORMAT}")
    return state


def remove_stale_temporaries(checkpoint_dir: str | Path) -> None:
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        for tmp in folder.glob(f".{FILE_NAME}.tmp-*"):
            tmp.unlink(missing_ok=True)

