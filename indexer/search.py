"""Search of one corpus at one loaded generation: dense, BM25 or hybrid, with or without a metadata filter.

A filter is applied inside each retriever, never to its top k afterwards: the chunks it allows
(from the generation's MetadataMap) are resolved once per filter to positions in the vector and
BM25 indexes (kept for the last FILTER_CACHE filters), the dense search ranks only those
(VectorIndex.search_subset), BM25 scores only those, and hybrid fuses the two filtered rankings.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from indexer.embedding import Embedder
from indexer.filters import MetadataFilter
from indexer.hybrid import reciprocal_rank_fusion
from indexer.lexical import LexicalIndex
from indexer.metadata_map import MetadataMap
from indexer.vector_index import IdSubset, VectorIndex

# The one list of search modes and the one bound on k: routes, domains and requests take these.
SearchMode = Literal["dense", "bm25", "hybrid"]
MODES: tuple[str, ...] = get_args(SearchMode)
MAX_K = 100
# In hybrid mode each retriever proposes this many times k candidates to the fusion, and never
# fewer than HYBRID_MIN_CANDIDATES: with short lists a chunk that both retrievers rank fairly
# well is cut from them, so the first hits (and their scores) would change with k.
HYBRID_CANDIDATES = 4
HYBRID_MIN_CANDIDATES = 50
FILTER_CACHE = 64  # filters whose resolved chunk subsets a searcher keeps (a key's, a domain's, ...)


def hybrid_candidates(k: int) -> int:
    """How many candidates each retriever proposes to the fusion for a top-k hybrid search."""
    return max(k * HYBRID_CANDIDATES, HYBRID_MIN_CANDIDATES)


@dataclass(frozen=True)
class _Allowed:
    """What one filter allows in one generation, resolved to each index's positions."""
    vector: IdSubset
    lexical: np.ndarray  # positions in the BM25 index

    @property
    def empty(self) -> bool:
        return not len(self.vector) and not len(self.lexical)


class CorpusSearcher:
    """`metadata`: the generation's chunk → document metadata map; without one, a filtered search
    finds nothing (fails closed)."""

    def __init__(self, embedder: Embedder, vector: VectorIndex, lexical: LexicalIndex,
                 metadata: MetadataMap | None = None):
        self.embedder = embedder
        self.vector = vector
        self.lexical = lexical
        self.metadata = metadata if metadata is not None else MetadataMap.empty()
        self._allowed: OrderedDict[MetadataFilter, _Allowed] = OrderedDict()
        self._allowed_lock = threading.Lock()

    def search(self, query: str, k: int, mode: str = "hybrid", *, query_vector: np.ndarray | None = None,
               filter: MetadataFilter | None = None) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first. Scores are cosine (dense), BM25 or RRF (hybrid).

        `query_vector`, when given, is the query already embedded with this corpus's
        embedder (so one embedding serves several corpora); otherwise it is computed here.
        With `filter`, only chunks of documents it matches are ranked (k of them when k exist).
        """
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r} (expected one of {', '.join(MODES)})")
        allowed = self.allowed(filter) if filter is not None else None
        if allowed is not None and allowed.empty:
            return []
        if mode == "bm25":
            return self._search_lexical(query, k, allowed)
        if query_vector is None:
            query_vector = self.embedder.encode([query])[0]
        if mode == "dense":
            return self._search_dense(query_vector, k, allowed)
        candidates = hybrid_candidates(k)
        return reciprocal_rank_fusion([self._search_dense(query_vector, candidates, allowed),
                                       self._search_lexical(query, candidates, allowed)], k)

    def search_vector(self, vector: np.ndarray, k: int, filter: MetadataFilter | None = None
                      ) -> list[tuple[int, float]]:
        """Dense search with a query embedded by the caller."""
        return self._search_dense(vector, k, self.allowed(filter) if filter is not None else None)

    def allowed(self, filter: MetadataFilter) -> _Allowed:
        """The chunks `filter` allows in this generation, resolved (and cached) per index."""
        with self._allowed_lock:
            found = self._allowed.get(filter)
            if found is not None:
                self._allowed.move_to_end(filter)
                return found
        ids = self.metadata.allowed_ids(filter)
        found = _Allowed(self.vector.subset(ids), self.lexical.positions(ids))
        with self._allowed_lock:
            self._allowed[filter] = found
            while len(self._allowed) > FILTER_CACHE:
                self._allowed.popitem(last=False)
        return found

    def _search_dense(self, vector: np.ndarray, k: int, allowed: _Allowed | None) -> list[tuple[int, float]]:
        if allowed is None:
            return self.vector.search_one(vector, k)
        return self.vector.search_subset(vector, k, allowed.vector)

    def _search_lexical(self, query: str, k: int, allowed: _Allowed | None) -> list[tuple[int, float]]:
        return self.lexical.search(query, k, None if allowed is None else allowed.lexical)
