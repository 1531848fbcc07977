"""The sentence-transformers model run by ONNX Runtime: same embeddings, less overhead.

The ONNX file is exported here by torch from the local model folder (nothing is fetched) into a
cache folder, once per model version, written under a temp name and renamed into place. Each
load checks the session against torch on a padded batch and refuses it when they disagree, so a
bad export can never change what a corpus retrieves.

Two sessions share the model: one thread for queries (a short pass gains nothing from a second
core, and the engine beside us needs it), all threads for ingestion batches. ONNX Runtime
sessions are safe to run from several threads, so a query never waits behind a batch.
"""

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer

from adapters_store.durable import fsync_dir, replace_durably, temp_sibling
from indexer.fast_tokenizer import padded_copy

log = logging.getLogger(__name__)

EXPORT_VERSION = 1  # bump when the export below changes, so old cached files are not reused
_SUPPORTED_POOLING = ("mean", "cls")
# Texts of mixed lengths in one batch: the check exercises padding and the attention mask.
_CHECK_TEXTS = ["graft", "An index generation is written to a temp file, fsynced and renamed. " * 6]
_CHECK_MIN_COSINE = 0.9999


class OnnxUnsupported(Exception):
    """The model's pipeline is not one this backend reproduces (use the torch backend)."""


def pooling_mode(model: SentenceTransformer) -> str:
    """The pooling of a Transformer -> Pooling [-> Normalize] pipeline; raises for any other one."""
    names = [type(module).__name__ for module in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OnnxUnsupported(f"pipeline {names} is not Transformer -> Pooling [-> Normalize]")
    mode = getattr(model[1], "pooling_mode", None)
    if mode not in _SUPPORTED_POOLING:
        raise OnnxUnsupported(f"pooling {mode!r} is not one of {_SUPPORTED_POOLING}")
    return mode


def cache_key(model_dir: Path) -> str:
    """Changes when any file of the model folder, torch or this export changes."""
    digest = hashlib.sha256(f"{EXPORT_VERSION}\0{torch.__version__}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"\0{path.relative_to(model_dir)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class _LastHiddenState(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module, input_names: list[str]):
        super().__init__()
        self.transformer = transformer
        self.input_names = input_names

    def forward(self, *inputs):
        return self.transformer(**dict(zip(self.input_names, inputs))).last_hidden_state


def export(model: SentenceTransformer, path: Path, input_names: list[str]) -> None:
    """Export the transformer (token ids -> last hidden state) to `path`, crash-safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sample = model.tokenizer(["an example", "a slightly longer example sentence"], padding=True,
                             return_tensors="pt")
    model_inputs = tuple(sample[n] for n in input_names)
    dynamic_axes = {n: {0: "batch", 1: "sequence"} for n in input_names + ["last_hidden_state"]}
    tmp = temp_sibling(path)
    try:
        with warnings.catch_warnings():
            # tracer notes about shapes and indexing: the check against torch at load is the proof
            warnings.simplefilter("ignore")
            torch.onnx.export(_LastHiddenState(model[0].auto_model.eval(), input_names), model_inputs, str(tmp),
                              input_names=input_names, output_names=["last_hidden_state"], opset_version=17,
                              dynamo=False, dynamic_axes=dynamic_axes)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent.parent)


class OnnxEncoder:
    """encode(texts, batch_size) -> L2-normalised float32 rows, as SentenceTransformer.encode."""

    def __init__(self, model: SentenceTransformer, model_path: Path, batch_threads: int):
        try:
            self._tokenizer = padded_copy(model.tokenizer, model.max_seq_length)
        except TypeError as exc:
            raise OnnxUnsupported(str(exc)) from exc
        self._pooling = pooling_mode(model)
        self._input_names = input_names(model)
        self._dimension = model.get_embedding_dimension()
        self._query = _session(model_path, threads=1)
        self._batch = _session(model_path, threads=batch_threads)

    @classmethod
    def load(cls, model: SentenceTransformer, model_dir: Path, cache_dir: Path,
             batch_threads: int | None = None) -> "OnnxEncoder":
        """Export (first time) or reuse the cached ONNX file, then check it against torch.
        A cached file that does not load or disagrees is exported again, once."""
        pooling_mode(model)
        path = cache_dir / f"{model_dir.name}-{cache_key(model_dir)}" / "model.onnx"
        threads = batch_threads or torch.get_num_threads()
        if path.is_file():
            try:
                return cls._checked(model, path, threads)
            except Exception as exc:  # a damaged cache file: ONNX Runtime raises its own types
                log.warning("cached ONNX embedding model %s is unusable (%s); exporting it again", path, exc)
                path.unlink()
        log.info("exporting embedding model %s to ONNX at %s", model_dir.name, path)
        export(model, path, input_names(model))
        return cls._checked(model, path, threads)

    @classmethod
    def _checked(cls, model: SentenceTransformer, path: Path, threads: int) -> "OnnxEncoder":
        encoder = cls(model, path, threads)
        encoder.check_against(model)
        return encoder

    def check_against(self, model: SentenceTransformer) -> None:
        expected = model.encode(_CHECK_TEXTS, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        cosine = np.sum(self.encode(_CHECK_TEXTS, len(_CHECK_TEXTS)) * expected, axis=1)
        if cosine.min() < _CHECK_MIN_COSINE:
            raise OnnxUnsupported(f"ONNX embeddings differ from torch's (cosine {cosine.min():.6f})")

    def encode(self, texts: list[str], batch_size: int, single_thread: bool = False) -> np.ndarray:
        session = self._query if single_thread else self._batch
        out = np.empty((len(texts), self._dimension), dtype=np.float32)
        # longest first, as sentence-transformers does, so batches carry little padding
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            tokens = _arrays(self._tokenizer.encode_batch([texts[i] for i in rows]))
            hidden = session.run(None, {n: tokens[n] for n in self._input_names})[0]
            out[rows] = self._pool(hidden, tokens["attention_mask"])
        return out

    def _pool(self, hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self._pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask[..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def _arrays(encodings) -> dict[str, np.ndarray]:
    """The model inputs of a padded batch of encodings, as int64 arrays."""
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


def input_names(model: SentenceTransformer) -> list[str]:
    """The tokenizer outputs the exported graph takes."""
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in model.tokenizer.model_input_names]


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle worker threads sleep instead of spinning: the CPU engine beside us wants the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

