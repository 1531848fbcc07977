import numpy as np
import pytest

from indexer.vector_index import VectorIndex


def unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_add_search_remove():
    vectors = unit_vectors(50, 16, seed=1)
    ids = np.arange(1000, 1050, dtype=np.int64)
    index = VectorIndex.empty(16)
    assert len(index) == 0 and index.kind == "flat" and index.search_one(vectors[0], 5) == []
    index.add(ids, vectors)
    assert len(index) == 50
    hits = index.search_one(vectors[7], 3)
    assert hits[0][0] == 1007 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert index.remove(np.array([1007, 999_999])) == 1
    assert len(index) == 49 and 1007 not in [i for i, _ in index.search_one(vectors[7], 10)]
    scores, found = index.search(vectors[:2], 60)
    assert found.shape == (2, 60) and (found[:, 49:] == -1).all()  # padding past ntotal
    assert len(index.search_one(vectors[0], 60)) == 49


def test_add_replaces_an_existing_id():
    vectors = unit_vectors(3, 8, seed=2)
    index = VectorIndex.empty(8)
    index.add(np.array([1, 2]), vectors[:2])
    index.add(np.array([1]), vectors[2:])
    assert len(index) == 2
    assert index.search_one(vectors[2], 1)[0][0] == 1
    assert sorted(index.ids().tolist()) == [1, 2]


def test_invalid_input():
    index = VectorIndex.empty(8)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.array([1]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="duplicate"):
        index.add(np.array([1, 1]), unit_vectors(2, 8, seed=3))
    with pytest.raises(ValueError, match="ids for"):
        index.add(np.array([1, 2]), unit_vectors(1, 8, seed=3))


def exact_top(queries, vectors, ids, k):
    return ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]


def recall_at(found: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, expected)]))


def test_switches_to_hnsw_past_exact_max_with_good_recall():
    vectors, queries = unit_vectors(5000, 32, seed=4), unit_vectors(100, 32, seed=5)
    ids = np.arange(5000, dtype=np.int64) * 3 + 11
    index = VectorIndex.empty(32, exact_max=1000)
    index.add(ids[:1000], vectors[:1000])
    assert index.kind == "flat"
    index.add(ids[1000:], vectors[1000:])
    assert index.kind == "hnsw"
    _, found = index.search(queries, 10)
    assert recall_at(found, exact_top(queries, vectors, ids, 10)) >= 0.95

    # Removal in HNSW mode: removed ids never come back, the rest stays searchable.
    removed = ids[:2500]
    index.remove(removed)
    _, found = index.search(queries, 10)
    assert not set(found.ravel().tolist()) & set(removed.tolist())
    assert recall_at(found, exact_top(queries, vectors[2500:], ids[2500:], 10)) >= 0.95
    assert index.kind == "hnsw"
    index.remove(ids[2500:4500])
    assert index.kind == "flat" and len(index) == 500


def test_save_load_round_trip_flat_and_hnsw(tmp_path):
    vectors, queries = unit_vectors(600, 16, seed=6), unit_vectors(20, 16, seed=7)
    ids = np.arange(600, dtype=np.int64) + 5
    for exact_max in (10_000, 200):
        index = VectorIndex.empty(16, exact_max=exact_max, hnsw_m=16, ef_search=80)
        index.add(ids, vectors)
        expected = index.search(queries, 5)
        path = tmp_path / f"vectors-{exact_max}.faiss"
        index.save(path)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
        loaded = VectorIndex.load(path, exact_max=exact_max, hnsw_m=16, ef_search=80)
        assert (len(loaded), loaded.kind) == (600, index.kind)
        np.testing.assert_array_equal(loaded.search(queries, 5)[1], expected[1])
        np.testing.assert_allclose(loaded.search(queries, 5)[0], expected[0], atol=1e-5)
        # The loaded index can still be changed (its flat source of truth was recovered).
        loaded.remove(ids[:300])
        assert len(loaded) == 300 and loaded.search_one(vectors[0], 1)[0][0] != ids[0]


def test_copy_is_independent():
    vectors, queries = unit_vectors(300, 8, seed=8), unit_vectors(5, 8, seed=9)
    index = VectorIndex.empty(8, exact_max=100)
    index.add(np.arange(300), vectors)
    expected = index.search(queries, 5)  # builds the HNSW index, which the copy carries
    copy = index.copy()
    np.testing.assert_array_equal(copy.search(queries, 5)[1], expected[1])
    copy.remove(np.arange(250))
    assert (len(index), len(copy), copy.kind) == (300, 50, "flat")
    np.testing.assert_array_equal(index.search(queries, 5)[1], expected[1])


def test_hnsw_parameters_reach_the_graph_and_survive_copy_save_load(tmp_path):
    import faiss

    vectors = unit_vectors(300, 8, seed=10)
    index = VectorIndex.empty(8, exact_max=100, hnsw_m=12, ef_construction=77, ef_search=33)
    index.add(np.arange(300), vectors)
    index.search_one(vectors[0], 5)  # builds the graph
    for candidate in (index, index.copy()):
        graph = faiss.downcast_index(candidate._current_hnsw().index)
        assert (candidate.hnsw_m, candidate.ef_construction, candidate.ef_search) == (12, 77, 33)
        assert graph.hnsw.efConstruction == 77 and graph.hnsw.nb_neighbors(1) == 12
    index.save(tmp_path / "v.faiss")
    loaded = VectorIndex.load(tmp_path / "v.faiss", exact_max=100, hnsw_m=12, ef_construction=77, ef_search=33)
    assert faiss.downcast_index(loaded._current_hnsw().index).hnsw.efConstruction == 77
    assert loaded.search_one(vectors[3], 1)[0][0] == 3


def test_defaults_search_wider_than_faiss():
    index = VectorIndex.empty(8)
    assert (index.hnsw_m, index.ef_construction, index.ef_search) == (32, 200, 256)


def test_a_single_query_runs_on_one_omp_thread_and_restores_the_count(monkeypatch):
    import faiss

    index = VectorIndex.empty(8, exact_max=50)
    vectors = unit_vectors(120, 8, seed=11)
    index.add(np.arange(120), vectors)
    seen = []
    search = faiss.IndexIDMap2.search

    def spy(self, *args, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return search(self, *args, **kwargs)

    monkeypatch.setattr(faiss.IndexIDMap2, "search", spy)
    before = faiss.omp_get_max_threads()
    assert index.search_one(vectors[4], 3)[0][0] == 4  # HNSW (120 > 50)
    index.search(vectors[:5], 3)
    assert seen == [1, before] and faiss.omp_get_max_threads() == before
