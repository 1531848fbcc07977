import numpy as np
import pytest

from indexer.lexical import LexicalIndex
from indexer.search import CorpusSearcher
from indexer.vector_index import VectorIndex

SENTENCES = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The mitochondria is the powerhouse of the cell.",
    "Python is a popular programming language for data science.",
    "The Great Wall of China stretches thousands of kilometres.",
    "Mount Everest is the highest mountain above sea level.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The Amazon rainforest produces a large share of the world's oxygen.",
    "Jupiter is the largest planet in our solar system.",
    "Shakespeare wrote Hamlet, Macbeth and Romeo and Juliet.",
    "The human heart pumps blood through the circulatory system.",
    "Bitcoin is a decentralised digital currency.",
    "The Pacific Ocean is the largest and deepest ocean on Earth.",
    "Vaccines train the immune system to recognise pathogens.",
    "The Mona Lisa was painted by Leonardo da Vinci.",
    "Honey bees communicate through a waggle dance.",
    "The speed of light in vacuum is about 300,000 kilometres per second.",
    "Rust guarantees memory safety without a garbage collector.",
    "The Sahara is the largest hot desert in the world.",
    "Antibiotics are used to treat bacterial infections.",
    "Kubernetes orchestrates containers across a cluster of machines.",
    "The Nile is one of the longest rivers in Africa.",
    "Chess is a strategy board game played on an 8x8 grid.",
    "Penguins are flightless birds that live mostly in the Southern Hemisphere.",
    "The French Revolution began in 1789.",
    "Espresso is brewed by forcing hot water through finely ground coffee.",
    "Tectonic plates move slowly and cause earthquakes.",
    "The violin is a string instrument played with a bow.",
    "Solar panels convert sunlight into electricity.",
    "The Roman Empire built roads and aqueducts across Europe.",
]
IDS = [1000 + 17 * i for i in range(len(SENTENCES))]


@pytest.fixture(scope="module")
def searcher(embedder) -> CorpusSearcher:
    vector = VectorIndex.empty(embedder.dimension)
    vector.add(np.array(IDS), embedder.encode(SENTENCES))
    return CorpusSearcher(embedder, vector, LexicalIndex.build(IDS, SENTENCES))


def chunk_id(sentence_index: int) -> int:
    return IDS[sentence_index]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
@pytest.mark.parametrize("query, expected", [
    ("Who painted the Mona Lisa?", 14),
    ("Which programming language is used for data science?", 3),
    ("How do bees communicate?", 15),
    ("What is the largest planet in the solar system?", 8),
])
def test_finds_the_right_sentence(searcher, mode, query, expected):
    hits = searcher.search(query, 3, mode=mode)
    assert hits[0][0] == chunk_id(expected)
    assert len(hits) <= 3 and all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))


def test_dense_finds_paraphrases_that_share_no_keyword(searcher):
    [(found, score)] = searcher.search("tallest peak on the planet", 1, mode="dense")
    assert found == chunk_id(5) and 0 < score <= 1


def test_a_query_embedded_once_serves_every_mode(searcher, embedder):
    query = "Who painted the Mona Lisa?"
    vector = embedder.encode([query])[0]
    assert searcher.search_vector(vector, 3) == searcher.search(query, 3, mode="dense")
    for mode in ("dense", "hybrid"):
        assert searcher.search(query, 3, mode, query_vector=vector) == searcher.search(query, 3, mode)
    # The given vector is used as is: a different one gives different dense results.
    other = embedder.encode(["Jupiter is a planet"])[0]
    assert searcher.search(query, 1, "dense", query_vector=other)[0][0] == chunk_id(8)


def test_hybrid_first_hits_do_not_depend_on_k():
    # Chunk 5 is 5th in both rankings, so fused it beats chunk 1 (first in dense only), but it
    # is only seen when each retriever proposes at least 5 candidates.
    angles = np.linspace(0, 1.2, 9)  # ids 1..9: cosine with the query falls with the id
    vectors = np.stack([np.cos(angles), np.sin(angles), np.zeros(9), np.zeros(9)], axis=1)
    texts = [f"plain filler text number {i}" for i in range(1, 5)] + ["zephyr filler text words"] + [
        " ".join(["zephyr"] * tf + ["filler"] * (5 - tf)) for tf in (5, 4, 3, 2)]
    ids = list(range(1, 10))
    vector = VectorIndex.empty(4)
    vector.add(np.array(ids), vectors.astype(np.float32))
    searcher = CorpusSearcher(None, vector, LexicalIndex.build(ids, texts))
    query = np.array([1, 0, 0, 0], dtype=np.float32)

    def hybrid(k: int):
        return searcher.search("zephyr", k, "hybrid", query_vector=query)

    assert [cid for cid, _ in hybrid(10)][:3] == [6, 7, 5]
    for k in (1, 2, 3):
        assert hybrid(k) == hybrid(10)[:k]


def test_unknown_mode(searcher):
    with pytest.raises(ValueError, match="unknown search mode"):
        searcher.search("anything", 3, mode="semantic")


def test_empty_corpus(embedder):
    empty = CorpusSearcher(embedder, VectorIndex.empty(embedder.dimension), LexicalIndex.build([], []))
    for mode in ("dense", "bm25", "hybrid"):
        assert empty.search("anything", 5, mode=mode) == []
