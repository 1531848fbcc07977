"""Retriever: corpora looked up by name in a real SQLite, the query embedded with the model SQL
names for each (a corpus created again under its name may use another one)."""

from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pytest
from sqlalchemy import update

from adapters_store.db import make_engine, make_session_factory, session_scope
from adapters_store.models import Chunk, Corpus, Document
from indexer.generation import GenerationStore
from indexer.lexical import LexicalIndex
from indexer.registry import CorpusRegistry
from indexer.vector_index import VectorIndex
from migrations.runner import upgrade
from service.rag.retrieval import Retriever, UnknownCorpus

# Each fake model embeds every text to its own unit vector, found nearest to one chunk.
MODEL_VECTORS = {"model-a": np.eye(8, dtype=np.float32)[0], "model-b": np.eye(8, dtype=np.float32)[1]}
CHUNK_OF = {"model-a": 10, "model-b": 20}


class CountingEmbedder:
    dimension = 8

    def __init__(self, name: str, calls: Counter):
        self.name, self.calls = name, calls

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls[self.name] += 1
        return np.stack([MODEL_VECTORS[self.name]] * len(texts))


@pytest.fixture
def setup(tmp_path):
    url = f"sqlite:///{tmp_path / 'graft.db'}"
    upgrade(url)
    db = make_engine(url)
    sessions = make_session_factory(db)
    with session_scope(sessions) as session:
        corpus = Corpus(name="docs", chunk_size=200, chunk_overlap=32, embedding_model="model-a",
                        current_generation=1)
        session.add(corpus)
        session.flush()
        document = Document(corpus_id=corpus.id, external_id="doc.txt", content_sha256="0" * 64,
                            doc_metadata={"filename": "doc.txt"})
        session.add(document)
        session.flush()
        session.add_all([Chunk(id=cid, corpus_id=corpus.id, document_id=document.id, ordinal=i,
                               text=f"chunk {cid}") for i, cid in enumerate((10, 20))])
        corpus_id = corpus.id
    store = GenerationStore(tmp_path / "indexes")
    vector = VectorIndex.empty(8)
    vector.add(np.array([10, 20]), np.stack([MODEL_VECTORS["model-a"], MODEL_VECTORS["model-b"]]))
    store.write(corpus_id, 1, vector, LexicalIndex.build([10, 20], ["chunk ten", "chunk twenty"]))
    calls = Counter()
    registry = CorpusRegistry(store, load_embedder=lambda name: CountingEmbedder(name, calls))
    retriever = Retriever(db, registry)
    yield retriever, sessions, calls
    db.dispose()


def top_chunk(retriever: Retriever, mode: str = "dense") -> int:
    hits, _ = retriever.search(["docs"], "which chunk?", 1, mode)
    return hits[0].chunk_id


def test_the_query_is_embedded_with_the_model_sql_names(setup):
    retriever, sessions, calls = setup
    assert top_chunk(retriever) == CHUNK_OF["model-a"]
    assert top_chunk(retriever, "hybrid") == CHUNK_OF["model-a"]
    assert calls == {"model-a": 2}

    # The corpus is deleted and created again under its name with another model (by another gateway).
    with session_scope(sessions) as session:
        session.execute(update(Corpus).values(embedding_model="model-b",
                                              created_at=datetime.now(timezone.utc)))
    assert top_chunk(retriever) == CHUNK_OF["model-b"]
    assert calls == {"model-a": 2, "model-b": 1}


def test_bm25_embeds_nothing_and_unknown_names_raise(setup):
    retriever, _, calls = setup
    hits, _ = retriever.search(["docs"], "twenty", 1, "bm25")
    assert [h.chunk_id for h in hits] == [20]
    assert (hits[0].document_id, hits[0].metadata) == ("doc.txt", {"filename": "doc.txt"})
    assert retriever.search(["docs"], "twenty", 1, "bm25")[0][0].text == "chunk 20"
    assert not calls
    with pytest.raises(UnknownCorpus, match="'nope'"):
        retriever.search(["docs", "nope"], "twenty", 1, "dense")
    assert not calls  # nothing searched before every name is known
