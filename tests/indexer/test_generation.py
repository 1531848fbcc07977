import os
import subprocess
import sys
import time

import numpy as np
import pytest

from indexer.generation import STALE_TMP_S, GenerationStore, temp_name
from indexer.lexical import LexicalIndex
from indexer.vector_index import VectorIndex


def make_indexes(n: int, seed: int) -> tuple[VectorIndex, LexicalIndex]:
    vectors = np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) + 100
    vector = VectorIndex.empty(8, exact_max=20, hnsw_m=8, ef_search=40)
    vector.add(ids, vectors)
    lexical = LexicalIndex.build(ids.tolist(), [f"chunk number{i} about topic{i % 3}" for i in range(n)])
    return vector, lexical


def test_write_load(tmp_path):
    store = GenerationStore(tmp_path / "indexes")
    vector, lexical = make_indexes(30, seed=1)
    folder = store.write(7, 1, vector, lexical)
    assert folder == store.generation_dir(7, 1) == tmp_path / "indexes" / "corpus-7" / "gen-00000001"
    assert sorted(p.name for p in folder.iterdir()) == ["lexical", "manifest.json", "vectors.faiss"]
    loaded_vector, loaded_lexical = store.load(7, 1)
    assert (len(loaded_vector), loaded_vector.kind, loaded_vector.exact_max) == (30, "hnsw", 20)
    assert loaded_lexical.search("number5", 1)[0][0] == 105
    assert store.generations(7) == [1]
    with pytest.raises(FileExistsError):
        store.write(7, 1, vector, lexical)
    with pytest.raises(FileNotFoundError):
        store.load(7, 2)


def test_failed_write_leaves_no_generation(tmp_path, monkeypatch):
    store = GenerationStore(tmp_path)
    vector, lexical = make_indexes(5, seed=2)

    def broken_save(folder):
        raise OSError("disk full")

    monkeypatch.setattr(lexical, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        store.write(1, 3, vector, lexical)
    assert list(store.corpus_dir(1).iterdir()) == []


def test_remove_superseded_keeps_the_current_and_newer_generations_and_live_writes(tmp_path):
    store = GenerationStore(tmp_path)
    for number in (1, 2, 3, 4):
        store.write(4, number, *make_indexes(5, seed=number))
    store.write(5, 1, *make_indexes(5, seed=9))
    folder = store.corpus_dir(4)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (folder / temp_name(pid=int(dead))).mkdir()  # what a writer killed mid-write leaves
    live = folder / temp_name()  # this process's: a write in progress
    live.mkdir()
    elsewhere = folder / temp_name(host="otherhost", pid=1)  # another host's: it may be writing
    elsewhere.mkdir()
    old = folder / temp_name(host="otherhost", pid=2)  # another host's, untouched for long: abandoned
    old.mkdir()
    os.utime(old, (time.time() - STALE_TMP_S - 60,) * 2)
    store.remove_superseded(4, 3)
    # Generation 4 may be another gateway's, about to be committed: it stays, as do live writes.
    assert sorted(p.name for p in folder.iterdir()) == sorted(["gen-00000003", "gen-00000004", live.name,
                                                               elsewhere.name])
    assert store.generations(5) == [1]
    store.remove_superseded(99, 1)  # unknown corpus: nothing to do
    store.remove_corpus(4)
    assert store.generations(4) == [] and not store.corpus_dir(4).exists()


def test_a_write_under_the_corpus_lock_replaces_an_uncommitted_orphan(tmp_path):
    store = GenerationStore(tmp_path)
    store.write(6, 2, *make_indexes(5, seed=1))  # its writer died before the SQL commit
    with pytest.raises(FileExistsError):
        store.write(6, 2, *make_indexes(7, seed=2))
    store.write(6, 2, *make_indexes(7, seed=2), replace=True)
    assert len(store.load(6, 2)[0]) == 7


def test_manifest_records_ef_construction_and_old_manifests_load(tmp_path):
    import json

    from indexer.vector_index import LEGACY_EF_CONSTRUCTION

    store = GenerationStore(tmp_path)
    vector, lexical = make_indexes(30, seed=3)
    vector.ef_construction = 60
    folder = store.write(1, 1, vector, lexical)
    assert store.load(1, 1)[0].ef_construction == 60
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["ef_construction"]  # a generation written before it was recorded
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded = store.load(1, 1)[0]
    assert (loaded.ef_construction, loaded.hnsw_m, loaded.ef_search) == (LEGACY_EF_CONSTRUCTION, 8, 40)


def test_registry_configures_new_indexes_and_the_search_beam_of_loaded_ones(tmp_path, monkeypatch):
    from indexer.registry import CorpusRegistry

    class FakeEmbedder:
        dimension = 8

    store = GenerationStore(tmp_path)
    vector, lexical = make_indexes(30, seed=4)  # hnsw_m 8, ef_search 40
    store.write(2, 1, vector, lexical)
    registry = CorpusRegistry(store, exact_max=20, hnsw_m=24, ef_construction=90, ef_search=300)
    monkeypatch.setattr(registry, "embedder", lambda name: FakeEmbedder())
    fresh = registry.load(1, "any", None).searcher.vector
    assert (fresh.exact_max, fresh.hnsw_m, fresh.ef_construction, fresh.ef_search) == (20, 24, 90, 300)
    loaded = registry.load(2, "any", 1).searcher.vector
    assert (loaded.hnsw_m, loaded.ef_search) == (8, 300)  # the graph keeps its degree; the beam follows
