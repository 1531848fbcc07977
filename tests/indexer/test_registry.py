"""Gateways sharing an index folder follow SQL's generation pointer (CorpusRegistry.current)."""

import logging
import threading

import numpy as np
import pytest

from indexer.generation import GenerationStore
from indexer.registry import CorpusRegistry, NotLoaded
from tests.indexer.test_generation import make_indexes


class FakeEmbedder:
    dimension = 8


def registry_over(store: GenerationStore) -> CorpusRegistry:
    return CorpusRegistry(store, exact_max=20, load_embedder=lambda name: FakeEmbedder())


def search_ids(registry: CorpusRegistry, corpus_id: int) -> set[int]:
    entry = registry.get(corpus_id)
    vector = entry.searcher.vector
    probe = np.ones(8, dtype=np.float32) / np.sqrt(8)
    return {cid for cid, _ in vector.search_one(probe, len(vector))}


def test_a_generation_published_elsewhere_is_loaded_when_the_pointer_moves(tmp_path):
    store = GenerationStore(tmp_path)
    store.write(3, 1, *make_indexes(10, seed=1))
    here = registry_over(store)
    entry = here.current(3, "any", 1)
    assert (entry.generation, len(entry.searcher.vector)) == (1, 10)

    store.write(3, 2, *make_indexes(25, seed=2))  # another gateway published generation 2
    assert here.current(3, "any", 1) is entry and entry.generation == 1  # SQL still said 1
    assert here.current(3, "any", 2) is entry
    assert (entry.generation, len(entry.searcher.vector)) == (2, 25)
    assert len(search_ids(here, 3)) == 25
    assert entry.searcher.lexical.search("number24", 1)[0][0] == 124


def test_a_newer_generation_in_memory_is_kept(tmp_path):
    """This gateway published 2 itself; a reader holding an older pointer changes nothing."""
    store = GenerationStore(tmp_path)
    store.write(3, 2, *make_indexes(10, seed=1))
    here = registry_over(store)
    here.current(3, "any", 2)
    assert here.current(3, "any", 1).generation == 2
    assert here.current(3, "any", None).generation == 2


def test_readers_never_wait_for_a_writer(tmp_path):
    store = GenerationStore(tmp_path)
    store.write(3, 1, *make_indexes(10, seed=1))
    here = registry_over(store)
    entry = here.current(3, "any", 1)
    store.write(3, 2, *make_indexes(25, seed=2))
    with entry.write_lock:  # a writer of this gateway is about to publish
        answered = []
        reader = threading.Thread(target=lambda: answered.append(here.current(3, "any", 2).generation))
        reader.start()
        reader.join(timeout=5)
        assert answered == [1]
    assert here.current(3, "any", 2).generation == 2  # the next request follows


def test_a_generation_already_removed_keeps_the_one_in_memory(tmp_path, caplog):
    store = GenerationStore(tmp_path)
    store.write(3, 1, *make_indexes(10, seed=1))
    here = registry_over(store)
    here.current(3, "any", 1)
    with caplog.at_level(logging.WARNING, logger="indexer.registry"):
        entry = here.current(3, "any", 4)  # superseded and removed by its writer before we looked
    assert (entry.generation, len(entry.searcher.vector)) == (1, 10)
    assert "stays at generation 1" in caplog.text
    assert not entry.write_lock.locked()


def test_a_new_corpus_under_a_reused_id_is_not_served_the_old_ones_index(tmp_path):
    store = GenerationStore(tmp_path)
    store.write(3, 5, *make_indexes(10, seed=1))
    here = registry_over(store)
    old = here.current(3, "any", 5, "created 09:00")
    store.remove_corpus(3)  # deleted through another gateway, then created again: SQLite gave it id 3
    new = here.current(3, "any", None, "created 10:00")
    assert new is not old and new.generation is None and len(new.searcher.vector) == 0
    assert here.current(3, "any", None, "created 10:00") is new


def test_without_may_load_nothing_is_read_from_disk(tmp_path):
    """What the gateway asks when it would plan on its event loop: serve what is in memory or say so."""
    store = GenerationStore(tmp_path)
    store.write(3, 1, *make_indexes(10, seed=1))
    here = registry_over(store)
    with pytest.raises(NotLoaded):  # never loaded here
        here.current(3, "any", 1, may_load=False)
    entry = here.current(3, "any", 1)
    assert here.current(3, "any", 1, may_load=False) is entry
    store.write(3, 2, *make_indexes(25, seed=2))
    with pytest.raises(NotLoaded):  # another gateway published generation 2
        here.current(3, "any", 2, may_load=False)
    assert entry.generation == 1
    with pytest.raises(NotLoaded):  # a new corpus under a reused id
        here.current(3, "any", None, "created 10:00", may_load=False)
    assert here.current(3, "any", 2).generation == 2
