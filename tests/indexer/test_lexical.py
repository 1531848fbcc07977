import pytest

from indexer.lexical import LexicalIndex

TEXTS = {
    11: "The FAISS library performs vector similarity search on dense embeddings.",
    12: "BM25 is a bag-of-words ranking function used by search engines.",
    13: "LoRA adapters are loaded into vLLM at runtime without a restart.",
    14: "PostgreSQL stores the generation pointer of every corpus.",
    15: "The the the and of a an.",
}


@pytest.fixture
def lexical() -> LexicalIndex:
    return LexicalIndex.build(list(TEXTS), list(TEXTS.values()))


def test_ranks_the_matching_chunk_first(lexical):
    hits = lexical.search("bm25 ranking function", 3)
    assert hits[0][0] == 12 and hits[0][1] > 0
    assert [i for i, _ in lexical.search("lora vllm runtime", 5)] == [13]
    both = [i for i, _ in lexical.search("vector search engines", 5)]
    assert set(both[:2]) == {11, 12}
    assert all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))


def test_no_results_without_a_shared_term(lexical):
    assert lexical.search("the of and", 5) == []  # only stopwords
    assert lexical.search("zebra", 5) == []
    assert lexical.search("", 5) == []
    assert lexical.search("faiss", 0) == []


def test_k_larger_than_the_index(lexical):
    assert [i for i, _ in lexical.search("search", 100)] in ([11, 12], [12, 11])


def test_empty_index():
    empty = LexicalIndex.build([], [])
    assert len(empty) == 0 and empty.search("anything", 5) == []


def test_save_load_round_trip(lexical, tmp_path):
    lexical.save(tmp_path / "lexical")
    assert [p.name for p in tmp_path.iterdir()] == ["lexical"]
    loaded = LexicalIndex.load(tmp_path / "lexical")
    assert len(loaded) == 5
    assert loaded.search("postgresql generation pointer", 2) == lexical.search("postgresql generation pointer", 2)
    with pytest.raises(FileExistsError):
        lexical.save(tmp_path / "lexical")
    LexicalIndex.build([], []).save(tmp_path / "empty")
    assert LexicalIndex.load(tmp_path / "empty").search("x", 3) == []


def test_mismatched_lengths():
    with pytest.raises(ValueError):
        LexicalIndex.build([1, 2], ["only one"])


def test_same_ranking_as_bm25s_retrieve():
    """search() scores and ranks as bm25s's own retrieve(), with ties in chunk order."""
    import bm25s

    from indexer.lexical import tokenize

    words = "otter river stone moss fern heron pike reed delta marsh".split()
    texts = [" ".join(words[(i * 7 + j) % 10] for j in range(i % 5 + 1)) for i in range(60)]
    index = LexicalIndex.build(list(range(100, 160)), texts)
    reference = bm25s.BM25()
    reference.index(tokenize(texts), show_progress=False)
    for query in ["otter", "moss fern", "heron pike reed", "delta marsh otter stone"]:
        hits = index.search(query, 10)
        docs, scores = reference.retrieve(tokenize([query]), k=len(texts), show_progress=False)
        expected = sorted(((float(s), 100 + int(d)) for d, s in zip(docs[0], scores[0]) if s > 0),
                          key=lambda pair: (-pair[0], pair[1]))[:10]
        assert [(round(s, 5), i) for i, s in hits] == [(round(s, 5), i) for s, i in expected]


def test_query_terms_are_what_bm25s_tokenize_makes_of_the_query():
    from indexer.lexical import query_terms, tokenize

    queries = ["Who founded the Zorblaven Observatory, and in which year?", "THE and OF", "a I x",
               "snake_case über-Straße 3.14 v2 n°7", "naïve café — déjà vu", "", "   ", "日本語のテキスト",
               "it's an API's can't won't", "e-mail: ops@graft.dev (24/7)"]
    for query in queries:
        assert query_terms(query) == tokenize([query])[0], query
