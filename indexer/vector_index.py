"""FAISS index of one corpus: stable int64 chunk ids, inner product on L2-normalised vectors.

Design: an `IndexIDMap2(IndexFlatIP)` is always the source of truth. It supports removal
and reconstruction and gives exact search, which is used while the index holds at most
`exact_max` vectors. Past that, searches go to an `IndexIDMap2(IndexHNSWFlat)` built from
the flat index. Additions are applied to both; a removal only marks the HNSW index stale
(HNSW cannot delete), and it is rebuilt from the flat vectors before the next search. So
deletes in a large corpus cost one rebuild, paid once per batch of mutations.

A saved file holds the flat index, or, in HNSW mode, the HNSW index: its storage holds all
the vectors, so the flat index is recovered from it on load without rebuilding the graph.
All operations take one lock, so a VectorIndex may be shared between threads.
"""

import threading
from pathlib import Path

import faiss
import numpy as np

from indexer.durable import replace_durably, temp_sibling


class VectorIndex:
    def __init__(self, flat: faiss.IndexIDMap2, *, exact_max: int = 50_000, hnsw_m: int = 32,
                 ef_search: int = 64, hnsw: faiss.IndexIDMap2 | None = None):
        self._flat = flat
        self._hnsw = hnsw
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self._lock = threading.RLock()

    @classmethod
    def empty(cls, dimension: int, exact_max: int = 50_000, hnsw_m: int = 32,
              ef_search: int = 64) -> "VectorIndex":
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))
        return cls(flat, exact_max=exact_max, hnsw_m=hnsw_m, ef_search=ef_search)

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
                self._hnsw = None  # stale: rebuilt from the flat index when needed
            return int(removed)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each of shape (n_queries, k); missing results have id -1."""
        queries = self._as_matrix(query_vectors)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        with self._lock:
            if self.kind == "flat":
                return self._flat.search(queries, k)
            hnsw = self._current_hnsw()
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            return hnsw.search(queries, k, params=params)

    def search_one(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first, for one query vector."""
        scores, ids = self.search(np.asarray(vector).reshape(1, -1), k)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i != -1]

    def copy(self) -> "VectorIndex":
        """An independent copy, for building the next generation while this one serves."""
        with self._lock:
            hnsw = faiss.clone_index(self._hnsw) if self._hnsw is not None else None
            return VectorIndex(faiss.clone_index(self._flat), exact_max=self.exact_max,
                               hnsw_m=self.hnsw_m, ef_search=self.ef_search, hnsw=hnsw)

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
    def load(cls, path: Path, exact_max: int = 50_000, hnsw_m: int = 32,
             ef_search: int = 64) -> "VectorIndex":
        index = faiss.read_index(str(path))
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"{path} is not a graft vector index (got {type(index).__name__})")
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexFlat):
            return cls(index, exact_max=exact_max, hnsw_m=hnsw_m, ef_search=ef_search)
        if isinstance(inner, faiss.IndexHNSWFlat):
            storage = faiss.downcast_index(inner.storage)
            flat = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
            if index.ntotal:
                flat.add_with_ids(storage.reconstruct_n(0, storage.ntotal),
                                  faiss.vector_to_array(index.id_map).astype(np.int64))
            return cls(flat, exact_max=exact_max, hnsw_m=hnsw_m, ef_search=ef_search, hnsw=index)
        raise ValueError(f"{path}: unsupported inner index {type(inner).__name__}")

    def _current_hnsw(self) -> faiss.IndexIDMap2:
        if self._hnsw is None:
            self._hnsw = self._build_hnsw()
        return self._hnsw

    def _build_hnsw(self) -> faiss.IndexIDMap2:
        hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT))
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
