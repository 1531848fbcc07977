"""Filtered search inside each retriever: real FAISS (flat and HNSW), real bm25s, the real embedder,
and the per-generation metadata map on a real SQLite database."""

import numpy as np
import pytest

from adapters_store import corpus_repo
from adapters_store.models import Chunk, Corpus, Document
from indexer.deletion import delete_document
from indexer.filters import intersect, parse
from indexer.generation import GenerationStore
from indexer.lexical import LexicalIndex
from indexer.metadata_map import MetadataMap
from indexer.publisher import publish_change
from indexer.registry import CorpusRegistry
from indexer.search import CorpusSearcher
from indexer.vector_index import VectorIndex
from tests.indexer.test_registry import FakeEmbedder
from tests.indexer.test_search import IDS, SENTENCES


def random_vectors(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)  # like graft's hashed chunk ids
    return ids, vectors


def exact_top(ids, vectors, allowed: np.ndarray, query: np.ndarray, k: int) -> list[int]:
    rows = np.flatnonzero(np.isin(ids, allowed))
    scores = vectors[rows] @ query
    return [int(ids[rows[i]]) for i in np.argsort(-scores, kind="stable")[:k]]


# ---------------------------------------------------------------- VectorIndex.search_subset


@pytest.mark.parametrize("size", [1, 7, 60, 1500, 3000])
def test_flat_subset_search_is_the_exact_filtered_top_k(size):
    ids, vectors = random_vectors(3000, 32, seed=1)
    index = VectorIndex.empty(32)
    index.add(ids, vectors)
    rng = np.random.default_rng(size)
    allowed = rng.choice(ids, size=size, replace=False)
    subset = index.subset(allowed)
    assert len(subset) == size
    for query in vectors[rng.integers(0, 3000, 5)]:
        hits = index.search_subset(query, 10, subset)
        assert [cid for cid, _ in hits] == exact_top(ids, vectors, allowed, query, 10)
        assert len(hits) == min(10, size)
        assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))
        expected = {int(i): float(v @ query) for i, v in zip(ids, vectors)}
        assert all(abs(score - expected[cid]) < 1e-5 for cid, score in hits)


def test_unknown_ids_are_ignored_and_an_empty_subset_finds_nothing():
    ids, vectors = random_vectors(100, 16, seed=2)
    index = VectorIndex.empty(16)
    index.add(ids, vectors)
    subset = index.subset(np.concatenate([ids[:3], [5, 6, 7], ids[:1]]))
    assert sorted(subset.ids.tolist()) == sorted(ids[:3].tolist())
    assert len(index.search_subset(vectors[0], 10, subset)) == 3
    assert index.search_subset(vectors[0], 10, index.subset([])) == []
    assert index.search_subset(vectors[0], 10, index.subset([1, 2])) == []


def test_a_subset_resolved_before_a_change_or_in_another_index_is_resolved_again():
    ids, vectors = random_vectors(500, 16, seed=3)
    index = VectorIndex.empty(16)
    index.add(ids, vectors)
    allowed = ids[::5]
    subset = index.subset(allowed)
    index.remove(ids[:250])  # compacts the flat storage: every position after them moves
    survivors = np.setdiff1d(allowed, ids[:250])
    query = vectors[400]
    hits = index.search_subset(query, 10, subset)
    assert [cid for cid, _ in hits] == exact_top(ids, vectors, survivors, query, 10)

    # A subset resolved in another index (a copy, changed since) is resolved again here too.
    copy = index.copy()
    copy.remove(survivors[:5])
    hits = copy.search_subset(query, 10, index.subset(allowed))
    assert [cid for cid, _ in hits] == exact_top(ids, vectors, survivors[5:], query, 10)


@pytest.fixture(scope="module")
def hnsw_index():
    ids, vectors = random_vectors(4000, 32, seed=4)
    index = VectorIndex.empty(32, exact_max=1000, hnsw_m=16, ef_construction=80, ef_search=16)
    index.add(ids, vectors)
    assert index.kind == "hnsw"
    index.search_one(vectors[0], 1)  # builds the graph
    return index, ids, vectors


def test_hnsw_large_subset_walks_the_graph_with_a_selector(hnsw_index, monkeypatch):
    index, ids, vectors = hnsw_index
    paths = []
    for name in ("_search_exact_subset", "_search_hnsw_subset"):
        original = getattr(index, name)
        monkeypatch.setattr(index, name, lambda *a, _o=original, _n=name, **kw: paths.append(_n) or _o(*a, **kw))
    rng = np.random.default_rng(5)
    allowed = rng.choice(ids, size=2000, replace=False)  # 50 %: 2000 > EXACT_PER_EF * efSearch 16
    subset = index.subset(allowed)
    recalls = []
    for query in vectors[rng.integers(0, 4000, 20)]:
        hits = index.search_subset(query, 10, subset)
        assert len(hits) == 10 and set(cid for cid, _ in hits) <= set(allowed.tolist())
        truth = exact_top(ids, vectors, allowed, query, 10)
        recalls.append(len(set(cid for cid, _ in hits) & set(truth)) / 10)
    assert set(paths) == {"_search_hnsw_subset"}
    assert np.mean(recalls) >= 0.9


def test_hnsw_small_subset_is_scored_exactly(hnsw_index, monkeypatch):
    index, ids, vectors = hnsw_index
    monkeypatch.setattr(index, "_search_hnsw_subset", lambda *a, **kw: pytest.fail("graph walk for 1 %"))
    rng = np.random.default_rng(6)
    allowed = rng.choice(ids, size=40, replace=False)  # 1 %: the beam would need widening 10x
    subset = index.subset(allowed)
    for query in vectors[rng.integers(0, 4000, 10)]:
        assert [c for c, _ in index.search_subset(query, 10, subset)] == exact_top(ids, vectors, allowed, query, 10)


def test_a_graph_walk_that_finds_too_few_falls_back_to_the_exact_search(hnsw_index, monkeypatch):
    index, ids, vectors = hnsw_index
    monkeypatch.setattr(index, "_search_hnsw_subset", lambda *a, **kw: [])
    allowed = ids[:3000]
    hits = index.search_subset(vectors[7], 10, index.subset(allowed))
    assert [c for c, _ in hits] == exact_top(ids, vectors, allowed, vectors[7], 10)


# ---------------------------------------------------------------- LexicalIndex filtered


def test_bm25_with_allowed_positions_ranks_only_those():
    rng = np.random.default_rng(7)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "zeta"]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(300)]
    ids = list(range(10_000, 10_300))
    lexical = LexicalIndex.build(ids, texts)
    unfiltered = lexical.search("alpha omega", 300)
    allowed_ids = np.array(ids[::7])
    positions = lexical.positions(np.concatenate([allowed_ids, [1, 2]]))  # unknown ids are ignored
    assert len(positions) == len(allowed_ids)
    hits = lexical.search("alpha omega", 5, allowed=positions)
    expected = [(cid, s) for cid, s in unfiltered if cid in set(allowed_ids.tolist())][:5]
    assert [c for c, _ in hits] == [c for c, _ in expected]
    assert [s for _, s in hits] == pytest.approx([s for _, s in expected])  # scores do not change
    assert lexical.search("alpha", 5, allowed=np.zeros(0, dtype=np.int64)) == []


# ---------------------------------------------------------------- MetadataMap


def test_metadata_map_answers_which_chunks_a_filter_allows():
    metadata = [{"group": "hr", "lang": "en"}, {"group": ["hr", "eng"]}, {"group": "eng", "lang": "en"}, None]
    chunks = np.array([50, 10, 40, 30, 20, 60])
    owners = np.array([0, 0, 1, 2, 3, 2])
    m = MetadataMap(chunks, owners, metadata)
    assert len(m) == 6 and m.documents == 4
    assert m.allowed_ids(parse({"group": "hr"})).tolist() == [10, 40, 50]
    assert m.allowed_ids(parse({"group": "eng"})).tolist() == [30, 40, 60]
    assert m.allowed_ids(parse({"lang": "en", "group": ["eng", "x"]})).tolist() == [30, 60]
    assert m.allowed_ids(parse({"group": "finance"})).tolist() == []
    assert m.allowed_ids(parse({"missing": 1})).tolist() == []
    assert MetadataMap.empty().allowed_ids(parse({"group": "hr"})).tolist() == []


# ---------------------------------------------------------------- CorpusSearcher, real embedder

GROUPS = {4: "geo", 5: "geo", 12: "geo", 18: "geo", 21: "geo", 9: "art", 14: "art", 27: "art"}


@pytest.fixture(scope="module")
def searcher(embedder) -> CorpusSearcher:
    vector = VectorIndex.empty(embedder.dimension)
    vector.add(np.array(IDS), embedder.encode(SENTENCES))
    metadata = [{"group": GROUPS.get(i, "misc"), "n": i} for i in range(len(SENTENCES))]
    return CorpusSearcher(embedder, vector, LexicalIndex.build(IDS, SENTENCES),
                          MetadataMap(np.array(IDS), np.arange(len(IDS)), metadata))


def allowed_ids(group: str) -> set[int]:
    return {IDS[i] for i, g in GROUPS.items() if g == group}


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_k_allowed_hits_come_back_even_when_none_is_in_the_unfiltered_top_k(searcher, mode):
    query = "Who painted the Mona Lisa?"
    unfiltered = {cid for cid, _ in searcher.search(query, 3, mode)}
    assert not unfiltered & allowed_ids("geo")  # a post-filter of this top 3 would leave nothing
    hits = searcher.search(query, 3, mode, filter=parse({"group": "geo"}))
    assert len(hits) == 3 and {cid for cid, _ in hits} <= allowed_ids("geo")
    assert searcher.search(query, 10, mode, filter=parse({"group": "art"}))[0][0] == IDS[14]
    # Fewer allowed than k: all of them.
    assert {c for c, _ in searcher.search(query, 10, mode, filter=parse({"group": "art"}))} == allowed_ids("art")


def test_bm25_filtered_ranks_allowed_chunks_that_share_a_term(searcher):
    hits = searcher.search("the largest", 2, "bm25", filter=parse({"group": "geo"}))
    assert {cid for cid, _ in hits} == {IDS[12], IDS[18]}  # Jupiter (8) also has "largest": not geo
    assert searcher.search("Mona Lisa", 5, "bm25", filter=parse({"group": "geo"})) == []


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_that_allow_nothing_find_nothing(searcher, mode):
    assert searcher.search("largest", 5, mode, filter=parse({"group": "finance"})) == []
    assert searcher.search("largest", 5, mode, filter=intersect(parse({"group": "geo"}), parse({"group": "art"}))) == []


def test_a_filter_on_two_keys_and_the_cache(searcher):
    f = parse({"group": ["geo", "art"], "n": [5, 14, 29]})
    hits = searcher.search("mountain painting", 10, "dense", filter=f)
    assert {cid for cid, _ in hits} == {IDS[5], IDS[14]}
    assert searcher.allowed(f) is searcher.allowed(parse({"n": [29, 14, 5], "group": ["art", "geo"]}))


def test_without_a_metadata_map_a_filtered_search_fails_closed(embedder):
    vector = VectorIndex.empty(embedder.dimension)
    vector.add(np.array(IDS), embedder.encode(SENTENCES))
    bare = CorpusSearcher(embedder, vector, LexicalIndex.build(IDS, SENTENCES))
    assert bare.search("largest", 5, "hybrid", filter=parse({"group": "geo"})) == []
    assert len(bare.search("largest", 5, "hybrid")) == 5


# ---------------------------------------------------------------- publish and load keep the map


def test_publishing_and_loading_keep_the_metadata_map_in_step_with_sql(sessions, tmp_path):
    with sessions() as session, session.begin():
        corpus_id = corpus_repo.create_corpus(session, "c", 64, 8, "any").id
    store = GenerationStore(tmp_path / "indexes")
    registry = CorpusRegistry(store, exact_max=20, load_embedder=lambda name: FakeEmbedder(), sessions=sessions)
    entry = registry.current(corpus_id, "any", None)
    vectors = np.eye(8, dtype=np.float32)

    def add(external_id: str, chunk_ids: list[int], metadata: dict) -> int:
        def apply_rows(session):
            document = Document(corpus_id=corpus_id, external_id=external_id, content_sha256="x",
                                doc_metadata=metadata)
            session.add(document)
            session.flush()
            session.add_all([Chunk(id=c, corpus_id=corpus_id, document_id=document.id, ordinal=i, text=f"t{c}")
                             for i, c in enumerate(chunk_ids)])
        return publish_change(sessions, registry, entry, remove_ids=[], add_ids=chunk_ids,
                              add_vectors=vectors[chunk_ids], add_texts=[f"t{c}" for c in chunk_ids],
                              apply_rows=apply_rows)

    add("a", [0, 1], {"group": "hr"})
    add("b", [2, 3, 4], {"group": ["eng", "all"]})
    hr, eng = parse({"group": "hr"}), parse({"group": "eng"})
    probe = np.ones(8, dtype=np.float32) / np.sqrt(8)
    assert {c for c, _ in entry.searcher.search_vector(probe, 10, hr)} == {0, 1}
    assert {c for c, _ in entry.searcher.search_vector(probe, 10, eng)} == {2, 3, 4}

    # Another gateway loads the generation from disk: its map comes from SQL.
    there = CorpusRegistry(store, exact_max=20, load_embedder=lambda name: FakeEmbedder(), sessions=sessions)
    loaded = there.current(corpus_id, "any", entry.generation)
    assert {c for c, _ in loaded.searcher.search_vector(probe, 10, eng)} == {2, 3, 4}

    with sessions() as session:
        b = corpus_repo.get_document(session, session.get(Corpus, corpus_id), "b")
    delete_document(sessions, registry, entry, b.id)
    assert entry.searcher.search_vector(probe, 10, eng) == []
    assert {c for c, _ in entry.searcher.search_vector(probe, 10, hr)} == {0, 1}
