"""Indexer fixtures: the real packaged embedding model, loaded once per session; a migrated SQLite."""

import pytest

from adapters_store.db import make_engine, make_session_factory
from indexer.embedding import Embedder
from migrations.runner import upgrade


@pytest.fixture(scope="session")
def embedder(embedding_cache_dir) -> Embedder:
    """The model as graft runs it by default (ONNX Runtime)."""
    return Embedder.load(backend="onnx", onnx_cache_dir=embedding_cache_dir)


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    """The same model through SentenceTransformer.encode (the reference)."""
    return Embedder.load(backend="torch")


@pytest.fixture
def sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()
