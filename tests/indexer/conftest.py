"""Indexer fixtures: the real packaged embedding model, loaded once per session."""

import pytest

from indexer.embedding import Embedder


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder.load()
