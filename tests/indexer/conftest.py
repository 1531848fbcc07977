"""Indexer fixtures: the real packaged embedding model, loaded once per session."""

import pytest

from indexer.embedding import Embedder


@pytest.fixture(scope="session")
def embedder(embedding_cache_dir) -> Embedder:
    """The model as graft runs it by default (ONNX Runtime)."""
    return Embedder.load(backend="onnx", onnx_cache_dir=embedding_cache_dir)


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    """The same model through SentenceTransformer.encode (the reference)."""
    return Embedder.load(backend="torch")
