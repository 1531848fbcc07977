"""FAISS index of one corpus: stable int64 chunk ids, inner product on L2-normalised vectors.

Design: an `IndexIDMap2(IndexFlatIP)` is always the source of truth. It supports removal
and reconstruction and gives exact search, which is used while the index holds at most
`exact_max` vectors. Past that, searches go to an `IndexIDMap2(IndexHNSWFlat)` built from
the flat index (graph degree `hnsw_m`, build beam `ef_construction`, search beam `ef_search`).
Additions are applied to both; a removal only marks the HNSW index stale (HNSW cannot
delete), and it is rebuilt from the flat vectors before the next search. So deletes in a large
corpus cost one rebuild, paid once per batch of mutations.

The HNSW defaults are measured (`bench/ingest.py`, part B: 100k MiniLM vectors, 1000 real
queries, 2 CPU cores): faiss's default efConstruction 40 with efSearch 64 (graft's former
setting) gave recall@10 0.72-0.86; M 32, efConstruction 200, efSearch 256 give 0.97 at about
0.9 ms a query (efConstruction 100 needs efSearch 384 for 0.96 at 1.2 ms), for a graph build of
about 45 s instead of 20 s per 100k vectors (paid when a corpus crosses `exact_max` and after
deletes).

A saved file holds the flat index, or, in HNSW mode, the HNSW index: its storage holds all
the vectors, so the flat index is recovered from it on load without rebuilding the graph.
All operations take one lock, so a VectorIndex may be shared between threads.

A filtered search (`subset` + `search_subset`) ranks only the vectors of a set of ids, inside the
search, so k results come back whenever k of them exist. A flat index, and a small subset of an
HNSW one, are scored exactly: the subset's vectors are read by position from the flat storage
(cost linear in the subset, never more than the unfiltered exact search). A large subset of an HNSW
index is searched through the graph with the subset as a bitmap selector and a search beam widened
as the subset's share of the index shrinks (the walk meets fewer members); a walk that still finds
fewer than k members falls back to the exact path. The subset's size against the widened beam
picks the cheaper path (`filtered_search_plan`, measured in bench/search_filter.py).

A single query is searched with one OpenMP thread: faiss splits one flat search across its
threads, and on a small, shared machine (or beside the embedder's own threads) waiting for the
second core costs more than it saves (`bench/ingest.py`, part B, 2 shared cores: one exact
query over 20k vectors 2 ms p50 on one thread vs 24 ms on two; over 100k, 10 vs 15 ms). An OpenMP thread count is per calling thread, so this
touches neither other searches nor a graph being built in another thread.
"""

import contextlib
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from adapters_store.durable import replace_durably, temp_sibling

HNSW_M = 32
EF_CONSTRUCTION = 200
EF_SEARCH = 256
# What generations written before `ef_construction` was recorded were built with (faiss's default).
LEGACY_EF_CONSTRUCTION = 40
# Filtered HNSW search (bench/search_filter.py: 100k vectors, 200 real queries, 2 shared cores). A
# graph walk with a selector meets members in proportion to their share of the index: at efSearch
# 256 its recall@10 fell from 0.954 (all allowed) to 0.94 (50 %), 0.90 (10 %) and 0.69 (1 %). With
# the beam widened to efSearch / sqrt(share) it stayed at 0.93-0.95, the unfiltered figure (at
# efSearch / share, 0.95-0.97 for up to twice the time). A unit of beam costs about what scoring 12
# vectors exactly does (3.6 us vs 0.3 us), so a subset of at most EXACT_PER_EF x the widened beam
# is scored exactly (14 leans to the exact path, whose recall is 1): at 100k vectors, subsets up to
# about 11 % of them; larger ones are walked.
MAX_FILTER_EF = 4096
EXACT_PER_EF = 14


def filtered_search_plan(subset: int, total: int, ef_search: int, k: int) -> tuple[bool, int]:
    """(exact, beam) for a filtered search of `subset` of an HNSW index's `total` vectors."""
    ef = max(ef_search, k)
    ef = min(math.ceil(ef * math.sqrt(total / max(subset, 1))), max(MAX_FILTER_EF, ef))
    return subset <= EXACT_PER_EF * ef, ef


@dataclass(frozen=True)
class IdSubset:
    """Some ids of a VectorIndex, resolved to positions in it (`VectorIndex.subset`)."""
    ids: np.ndarray  # the ids present in the index, sorted
    positions: np.ndarray  # their positions in the flat index, ascending
    version: int  # the index's mutation count they were resolved at
    source: object = None  # the index they were resolved in (its token)

    def __len__(self) -> int:
        return len(self.ids)


class VectorIndex:
    def __init__(self, flat: faiss.IndexIDMap2, *, exact_max: int = 50_000, hnsw_m: int = HNSW_M,
                 ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH,
                 hnsw: faiss.IndexIDMap2 | None = None):
        self._flat = flat
        self._hnsw = hnsw
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._lock = threading.RLock()
        self._version = 0  # mutations so far: positions resolved before one are stale
        self._token = object()  # tells this index's IdSubsets from another's (a copy's)
        self._sorted_ids: tuple | None = None  # see _positions
        self._aligned_hnsw: tuple | None = None  # (graph, version) known to hold the flat positions

    @classmethod
    def empty(cls, dimension: int, exact_max: int = 50_000, hnsw_m: int = HNSW_M,
              ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH) -> "VectorIndex":
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        return cls(flat, exact_max=exact_max, hnsw_m=hnsw_m, ef_construction=ef_construction,
                   ef_search=ef_search)

    @property
    def dimension(self) -> int:
        return self._flat.d

    @property
    def kind(self) -> str:
        return "hnsw" if self._flat.ntotal > self.exact_max else "flat"

    def __len__(self) -> int:
        return self._flat.ntotal

    def ids(self) -> np.ndarray:
        with self._lock:
            return faiss.vector_to_array(self._flat.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ids; an id already present is replaced."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        vectors = self._as_matrix(vectors)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("duplicate ids in one add")
        if not len(ids):
            return
        with self._lock:
            self.remove(ids)
            self._version += 1
            self._flat.add_with_ids(vectors, ids)
            if self._hnsw is not None:
                self._hnsw.add_with_ids(vectors, ids)

    def remove(self, ids) -> int:
        """Remove ids (absent ones are ignored); returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return 0
        with self._lock:
            removed = self._flat.remove_ids(faiss.IDSelectorBatch(ids))
            if removed:
                self._version += 1
                self._hnsw = None  # stale: rebuilt from the flat index when needed
            return int(removed)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each of shape (n_queries, k); missing results have id -1."""
        queries = self._as_matrix(query_vectors)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        threads = _one_omp_thread() if len(queries) == 1 else contextlib.nullcontext()
        with self._lock:
            if self.kind == "flat":
                with threads:
                    return self._flat.search(queries, k)
            hnsw = self._current_hnsw()  # built (in parallel) before the thread count drops
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            with threads:
                return hnsw.search(queries, k, params=params)

    def search_one(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first, for one query vector."""
        scores, ids = self.search(np.asarray(vector).reshape(1, -1), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != -1]

    def subset(self, ids: np.ndarray) -> IdSubset:
        """The ids among `ids` that the index holds, resolved to positions (for `search_subset`)."""
        ids = _sorted_unique(ids)
        with self._lock:
            version, ids_at, sorted_ids, order = self._positions()
            at = np.searchsorted(sorted_ids, ids)
            present = at < len(sorted_ids)
            present[present] = sorted_ids[at[present]] == ids[present]
            members = np.zeros(len(ids_at), dtype=bool)  # positions in order without a sort
            members[order[at[present]]] = True
            return IdSubset(ids[present], np.flatnonzero(members), version, self._token)

    def search_subset(self, vector: np.ndarray, k: int, subset: IdSubset) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first, for one query vector, among the vectors of `subset` only:
        min(k, len(subset)) of them (the exact top k, or HNSW's with a recall near the unfiltered one)."""
        query = self._as_matrix(np.asarray(vector).reshape(1, -1))
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            if subset.source is not self._token or subset.version != self._version:
                subset = self.subset(subset.ids)  # resolved elsewhere or before a mutation: again
            m = len(subset.positions)
            if not m:
                return []
            if self.kind == "hnsw":
                exact, ef = filtered_search_plan(m, self._flat.ntotal, self.ef_search, k)
                if not exact:
                    hnsw = self._current_hnsw()
                    if self._hnsw_is_aligned(hnsw):
                        with _one_omp_thread():
                            hits = self._search_hnsw_subset(hnsw, query, k, subset, ef)
                        if len(hits) >= min(k, m):
                            return hits
            with _one_omp_thread():  # an OpenMP region for one query waits for a second core (see above)
                return self._search_exact_subset(query, k, subset)

    def _search_exact_subset(self, query: np.ndarray, k: int, subset: IdSubset) -> list[tuple[int, float]]:
        """Score the subset's vectors, read in place from the flat storage (one thread, no copy)."""
        flat = faiss.downcast_index(self._flat.index)
        positions = np.ascontiguousarray(subset.positions, dtype=np.int64)
        m = len(positions)
        storage = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dimension)  # valid under the lock
        scores = np.empty(m, dtype=np.float32)
        faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(query), faiss.swig_ptr(storage),
                                         faiss.swig_ptr(positions), self.dimension, 1, m)
        k = min(k, m)
        top = np.argpartition(-scores, k - 1)[:k] if k < m else np.arange(m)
        top = top[np.lexsort((top, -scores[top]))]  # best first; ties in position order
        ids_at = self._positions()[1]
        return [(int(ids_at[positions[i]]), float(scores[i])) for i in top]

    def _search_hnsw_subset(self, hnsw: faiss.IndexIDMap2, query: np.ndarray, k: int, subset: IdSubset,
                            ef: int) -> list[tuple[int, float]]:
        """The graph walk with the subset's positions as a bitmap selector on the inner HNSW index."""
        n = self._flat.ntotal
        members = np.zeros(n, dtype=bool)
        members[subset.positions] = True
        bitmap = np.packbits(members, bitorder="little")  # faiss: bit (i & 7) of byte i >> 3
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        params = faiss.SearchParametersHNSW(efSearch=ef, sel=selector)
        scores, positions = faiss.downcast_index(hnsw.index).search(query, k, params=params)
        ids_at = self._positions()[1]
        return [(int(ids_at[p]), float(s)) for p, s in zip(positions[0], scores[0])
                if p != -1 and members[p]]

    def _positions(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(version, id at each position, ids sorted, the position of each sorted id), cached per version."""
        cached = self._sorted_ids
        if cached is None or cached[0] != self._version:
            ids_at = faiss.vector_to_array(self._flat.id_map).astype(np.int64)
            order = np.argsort(ids_at, kind="stable")
            cached = self._sorted_ids = (self._version, ids_at, ids_at[order], order)
        return cached

    def _hnsw_is_aligned(self, hnsw: faiss.IndexIDMap2) -> bool:
        """Whether the graph holds each vector at its flat position (as it is built and loaded):
        the selector and the result positions are flat positions. Checked once per graph and version."""
        known = self._aligned_hnsw
        if known is None or known[0] is not hnsw or known[1] != self._version:
            if not np.array_equal(faiss.vector_to_array(hnsw.id_map), self._positions()[1]):
                return False  # never expected; the exact path is right anyway
            self._aligned_hnsw = (hnsw, self._version)
        return True

    def copy(self) -> "VectorIndex":
        """An independent copy, for building the next generation while this one serves."""
        with self._lock:
            hnsw = faiss.clone_index(self._hnsw) if self._hnsw is not None else None
            return VectorIndex(faiss.clone_index(self._flat), exact_max=self.exact_max,
                               hnsw_m=self.hnsw_m, ef_construction=self.ef_construction,
                               ef_search=self.ef_search, hnsw=hnsw)

    def save(self, path: Path) -> None:
        """Write durably: temp file in the same folder, fsync, rename, fsync the folder."""
        path = Path(path)
        tmp = temp_sibling(path)
        with self._lock:
            index = self._current_hnsw() if self.kind == "hnsw" else self._flat
            try:
                faiss.write_index(index, str(tmp))
                replace_durably(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    @classmethod
    def load(cls, path: Path, exact_max: int = 50_000, hnsw_m: int = HNSW_M,
             ef_construction: int = EF_CONSTRUCTION, ef_search: int = EF_SEARCH) -> "VectorIndex":
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"{path} is not a graft vector index (got {type(index).__name__})")
        inner = faiss.downcast_index(index.index)
        params = dict(exact_max=exact_max, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        if isinstance(inner, faiss.IndexFlat):
            return cls(index, **params)
        if isinstance(inner, faiss.IndexHNSWFlat):
            inner.hnsw.efConstruction = ef_construction  # for vectors added to the loaded graph
            storage = faiss.downcast_index(inner.storage)
            flat = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
            if index.ntotal:
                flat.add_with_ids(storage.reconstruct_n(0, storage.ntotal),
                                  faiss.vector_to_array(index.id_map).astype(np.int64))
            return cls(flat, **params, hnsw=index)
        raise ValueError(f"{path}: unsupported inner index {type(inner).__name__}")

    def _current_hnsw(self) -> faiss.IndexIDMap2:
        if self._hnsw is None:
            self._hnsw = self._build_hnsw()
        return self._hnsw

    def _build_hnsw(self) -> faiss.IndexIDMap2:
        inner = faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.ef_construction
        hnsw = faiss.IndexIDMap2(inner)
        n = self._flat.ntotal
        if n:
            vectors = faiss.downcast_index(self._flat.index).reconstruct_n(0, n)
            hnsw.add_with_ids(vectors, faiss.vector_to_array(self._flat.id_map).astype(np.int64))
        return hnsw

    def _as_matrix(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {vectors.shape}")
        return vectors


def _sorted_unique(ids) -> np.ndarray:
    """ids as a sorted int64 array without repeats (already so, as MetadataMap gives them: no sort)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    return ids if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])) else np.unique(ids)


@contextlib.contextmanager
def _one_omp_thread():
    """faiss uses one OpenMP thread in the calling thread for the duration (then what it had)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
