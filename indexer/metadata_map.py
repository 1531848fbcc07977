"""Which chunks of a corpus a metadata filter allows: chunk id → its document's metadata, in memory.

One map per loaded index generation, beside its vector and BM25 indexes (indexer/registry.py). It
is read from SQL in the transaction that commits the generation (indexer/publisher.py) or when a
generation is loaded, so it holds exactly the documents and chunks SQL holds for the corpus then.
A chunk it does not know is allowed by no filter: a search with a filter fails closed.

A filter is evaluated per document, not per chunk: a posting list per (key, value) is built the
first time a key is filtered on, so a filter costs one pass over its values' postings and one
over the chunk array (about 0.1 ms for 100k chunks).
"""

import threading
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters_store.models import Chunk, Document
from indexer.filters import MetadataFilter, Token, tokens_of


class MetadataMap:
    def __init__(self, chunk_ids: np.ndarray, chunk_documents: np.ndarray, metadata: Sequence[dict | None]):
        """`chunk_documents[i]` is the index in `metadata` of the document chunk `chunk_ids[i]` belongs to."""
        chunk_ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        chunk_documents = np.asarray(chunk_documents, dtype=np.int64).reshape(-1)
        if len(chunk_ids) != len(chunk_documents):
            raise ValueError(f"{len(chunk_ids)} chunk ids for {len(chunk_documents)} document indexes")
        order = np.argsort(chunk_ids, kind="stable")
        self._chunk_ids = chunk_ids[order]  # sorted: the allowed ids come out sorted
        self._chunk_documents = chunk_documents[order]
        self._metadata = [m if isinstance(m, dict) else {} for m in metadata]
        self._postings: dict[str, dict[Token, np.ndarray]] = {}
        self._lock = threading.Lock()

    @classmethod
    def empty(cls) -> "MetadataMap":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), [])

    @classmethod
    def read(cls, session: Session, corpus_id: int) -> "MetadataMap":
        """The corpus's documents and chunks as `session` sees them."""
        documents = session.execute(select(Document.id, Document.doc_metadata)
                                    .where(Document.corpus_id == corpus_id)).all()
        position = {row.id: i for i, row in enumerate(documents)}
        chunks = session.execute(select(Chunk.id, Chunk.document_id).where(Chunk.corpus_id == corpus_id)).all()
        ids = np.fromiter((row.id for row in chunks), dtype=np.int64, count=len(chunks))
        owners = np.fromiter((position.get(row.document_id, -1) for row in chunks), dtype=np.int64,
                             count=len(chunks))
        known = owners >= 0  # a chunk row always has its document; kept out otherwise
        return cls(ids[known], owners[known], [row.doc_metadata for row in documents])

    def __len__(self) -> int:
        return len(self._chunk_ids)

    @property
    def documents(self) -> int:
        return len(self._metadata)

    def matching_documents(self, f: MetadataFilter) -> np.ndarray:
        """A boolean per document: whether it matches `f`."""
        matched = np.ones(len(self._metadata), dtype=bool)
        for key, allowed in f.terms:
            postings = self._postings_of(key)
            key_matched = np.zeros(len(self._metadata), dtype=bool)
            for t in allowed:
                documents = postings.get(t)
                if documents is not None:
                    key_matched[documents] = True
            matched &= key_matched
        return matched

    def allowed_ids(self, f: MetadataFilter) -> np.ndarray:
        """The ids of the chunks whose document matches `f`, sorted ascending."""
        if f.matches_nothing or not len(self._chunk_ids):
            return np.zeros(0, dtype=np.int64)
        return self._chunk_ids[self.matching_documents(f)[self._chunk_documents]]

    def _postings_of(self, key: str) -> dict[Token, np.ndarray]:
        postings = self._postings.get(key)
        if postings is not None:
            return postings
        with self._lock:
            if key not in self._postings:
                lists: dict[Token, list[int]] = {}
                for i, metadata in enumerate(self._metadata):
                    if key in metadata:
                        for t in set(tokens_of(metadata[key])):
                            lists.setdefault(t, []).append(i)
                self._postings[key] = {t: np.asarray(docs, dtype=np.int64) for t, docs in lists.items()}
            return self._postings[key]
