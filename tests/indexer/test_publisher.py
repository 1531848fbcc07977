"""publish_change on a real SQLite database: a change built on a generation SQL has moved past is refused."""

import numpy as np
import pytest
from sqlalchemy import select

from adapters_store import corpus_repo
from adapters_store.models import Corpus, IndexGeneration
from indexer.generation import GenerationStore
from indexer.publisher import StaleGeneration, publish_change
from indexer.registry import CorpusRegistry
from tests.indexer.test_registry import FakeEmbedder


def add_one(sessions, registry, entry, chunk: int) -> int:
    vector = np.zeros((1, 8), dtype=np.float32)
    vector[0, chunk % 8] = 1.0
    return publish_change(sessions, registry, entry, remove_ids=[], add_ids=[chunk], add_vectors=vector,
                          add_texts=[f"chunk {chunk}"], apply_rows=lambda session: None)


def test_a_change_on_a_stale_generation_is_refused_and_loses_nothing(sessions, tmp_path):
    with sessions() as session, session.begin():
        corpus_id = corpus_repo.create_corpus(session, "c", 64, 8, "any").id
    store = GenerationStore(tmp_path / "indexes")
    here = CorpusRegistry(store, exact_max=20, load_embedder=lambda name: FakeEmbedder())
    there = CorpusRegistry(store, exact_max=20, load_embedder=lambda name: FakeEmbedder())
    mine, theirs = here.current(corpus_id, "any", None), there.current(corpus_id, "any", None)

    assert add_one(sessions, there, theirs, 1) == 1
    with pytest.raises(StaleGeneration, match="moved to generation 1"):
        add_one(sessions, here, mine, 3)  # built on none, checked against SQL's pointer under its lock

    # Then its generation 2 (removing 1's folder): still refused, by SQL's pointer.
    assert add_one(sessions, there, theirs, 2) == 2
    with pytest.raises(StaleGeneration, match="moved to generation 2"):
        add_one(sessions, here, mine, 3)  # would drop chunks 1 and 2 and move the pointer back
    with sessions() as session:
        assert session.get(Corpus, corpus_id).current_generation == 2
        assert session.scalars(select(IndexGeneration.number)).all() == [1, 2]
    assert mine.generation is None  # nothing half-switched in memory

    # Following the pointer first, the same change goes through on top of the other ones.
    assert add_one(sessions, here, here.current(corpus_id, "any", 2), 3) == 3
    assert len(here.get(corpus_id).searcher.vector) == 3
