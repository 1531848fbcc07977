"""BM25 keyword index over chunk texts, with bm25s (English stopwords, no stemming)."""

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN

from adapters_store.durable import fsync_dir, fsync_tree

_IDS_FILE = "chunk_ids.npy"
_META_FILE = "graft_lexical.json"
_FORMAT = 1


TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # bm25s's default: words of two or more characters
_TOKEN = re.compile(TOKEN_PATTERN)
_STOPWORDS = frozenset(STOPWORDS_EN)


def tokenize(texts: list[str]) -> list[list[str]]:
    return bm25s.tokenize(texts, lower=True, token_pattern=TOKEN_PATTERN, stopwords=list(STOPWORDS_EN),
                          return_ids=False, show_progress=False)


def query_terms(query: str) -> list[str]:
    """tokenize([query])[0], without the regex compile and the two (disabled) progress bars
    bm25s.tokenize sets up per call, which take most of its time for one short query."""
    return [term for term in _TOKEN.findall(query.lower()) if term not in _STOPWORDS]


class LexicalIndex:
    def __init__(self, ids: np.ndarray, retriever: bm25s.BM25 | None):
        self._ids = ids
        self._retriever = retriever  # None when there are no documents (bm25s needs one)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # (ids sorted, their positions)

    @classmethod
    def build(cls, ids: list[int], texts: list[str]) -> "LexicalIndex":
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        ids_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids_array):
            return cls(ids_array, None)
        retriever = bm25s.BM25()
        retriever.index(tokenize(list(texts)), show_progress=False)
        return cls(ids_array, retriever)

    def __len__(self) -> int:
        return len(self._ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The positions (ascending) of the chunks among `ids` that this index holds: a filtered
        search's `allowed`."""
        if self._sorted is None:  # the index never changes: computed once
            order = np.argsort(self._ids, kind="stable")
            self._sorted = (self._ids[order], order)
        sorted_ids, order = self._sorted
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        at = np.searchsorted(sorted_ids, ids)
        present = at < len(sorted_ids)
        present[present] = sorted_ids[at[present]] == ids[present]
        members = np.zeros(len(self._ids), dtype=bool)  # ascending and without repeats, without a sort
        members[order[at[present]]] = True
        return np.flatnonzero(members)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """[(chunk id, score)] best first; only chunks sharing a term with the query, and with
        `allowed` (positions from `positions`) only those: the top k among them."""
        if self._retriever is None or k < 1 or (allowed is not None and not len(allowed)):
            return []
        terms = [t for t in query_terms(query) if t in self._retriever.vocab_dict]
        if not terms:
            return []
        # Scores for every chunk, then the top k here: bm25s's retrieve() takes half a
        # millisecond per query just setting up its (disabled) progress bars. A chunk's BM25
        # score does not depend on which others are allowed: restricting the scores is the
        # filtered ranking.
        scores = self._retriever.get_scores(terms)
        candidates = None
        if allowed is not None:
            candidates, scores = allowed, scores[allowed]
        k = min(k, len(scores))
        kth_best = np.partition(scores, len(scores) - k)[len(scores) - k]
        top = np.flatnonzero(scores >= kth_best)
        top = top[np.lexsort((top, -scores[top]))][:k]  # best first; ties in index order
        at = top if candidates is None else candidates[top]
        return [(int(self._ids[d]), float(s)) for d, s in zip(at, scores[top]) if s > 0]

    def save(self, folder: Path) -> None:
        """Write into a temp folder beside `folder`, fsync it all, then rename it into place.

        `folder` must not exist: a saved index is immutable.
        """
        folder = Path(folder)
        if folder.exists():
            raise FileExistsError(f"{folder} already exists")
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.mkdir(parents=True)
            np.save(tmp / _IDS_FILE, self._ids, allow_pickle=False)
            if self._retriever is not None:
                self._retriever.save(tmp, show_progress=False)
            (tmp / _META_FILE).write_text(json.dumps({"format": _FORMAT, "count": len(self._ids)}))
            fsync_tree(tmp)
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(folder.parent)

    @classmethod
    def load(cls, folder: Path) -> "LexicalIndex":
        folder = Path(folder)
        meta = json.loads((folder / _META_FILE).read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{folder}: unsupported lexical index format {meta.get('format')!r}")
        ids = np.load(folder / _IDS_FILE, allow_pickle=False)
        retriever = bm25s.BM25.load(folder) if len(ids) else None
        return cls(ids, retriever)
