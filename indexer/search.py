"""Search of one corpus at one loaded generation: dense, BM25 or hybrid."""

from typing import Literal, get_args

import numpy as np

from indexer.embedding import Embedder
from indexer.hybrid import reciprocal_rank_fusion
from indexer.lexical import LexicalIndex
from indexer.vector_index import VectorIndex

# The one list of search modes and the one bound on k: routes, domains and requests take these.
SearchMode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = get_args(SearchMode)
MAX_K = 100
# In hybrid mode each retriever proposes this many times k candidates to the fusion, and never
# fewer than HYBRID_MIN_CANDIDATES: with short lists a chunk that both retrievers rank fairly
# well is cut from them, so the first hits (and their scores) would change with k.
HYBRID_CANDIDATES = 4
HYBRID_MIN_CANDIDATES = 50


def hybrid_candidates(k: int) -> int:
    """How many candidates each retriever proposes to the fusion for a top-k hybrid search."""
    return max(k * HYBRID_CANDIDATES, HYBRID_MIN_CANDIDATES)


class CorpusSearcher:
    def __init__(self, embedder: Embedder, vector: VectorIndex, lexical: LexicalIndex):
        self.embedder = embedder
        self.vector = vector
        self.lexical = lexical

    def search(self, query: str, k: int, mode: str = "hybrid", *,
               query_vector: np.ndarray | None = None) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first. Scores are cosine (dense), BM25 or RRF (hybrid).

        `query_vector`, when given, is the query already embedded with this corpus's
        embedder (so one embedding serves several corpora); otherwise it is computed here.
        """
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r} (expected one of {', '.join(MODES)})")
        if mode == "bm25":
            return self.lexical.search(query, k)
        if query_vector is None:
            query_vector = self.embedder.encode([query])[0]
        if mode == "dense":
            return self.search_vector(query_vector, k)
        candidates = hybrid_candidates(k)
        return reciprocal_rank_fusion([self.search_vector(query_vector, candidates),
                                       self.lexical.search(query, candidates)], k)

    def search_vector(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Dense search with a query embedded by the caller."""
        return self.vector.search_one(vector, k)
