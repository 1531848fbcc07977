"""Search one or more corpora for a query and return hydrated hits (text, document, metadata)."""

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.models import Chunk, Corpus, Document
from indexer.hybrid import reciprocal_rank_fusion
from indexer.registry import CorpusRegistry

MODES = ("dense", "bm25", "hybrid")


@dataclass
class Hit:
    corpus: str
    document_id: str
    chunk_id: int
    score: float
    text: str
    metadata: dict

    def as_dict(self) -> dict:
        return {"corpus": self.corpus, "document_id": self.document_id, "chunk_id": self.chunk_id,
                "score": self.score, "text": self.text, "metadata": self.metadata}


class Retriever:
    def __init__(self, sessions: sessionmaker[Session], registry: CorpusRegistry):
        self.sessions = sessions
        self.registry = registry

    def search(self, corpora: list[Corpus], query: str, k: int, mode: str,
               min_score: float | None = None) -> tuple[list[Hit], float]:
        """Top-k hits over `corpora` (fused by rank when there are several), and seconds spent."""
        started = time.perf_counter()
        vectors: dict[str, object] = {}  # one query embedding per embedding model
        rankings, owners = [], {}
        for corpus in corpora:
            entry = self.registry.entry_for(corpus)
            searcher = entry.searcher
            if mode != "bm25" and corpus.embedding_model not in vectors:
                vectors[corpus.embedding_model] = searcher.embedder.encode([query])[0]
            ranked = searcher.search(query, k, mode, query_vector=vectors.get(corpus.embedding_model))
            if min_score is not None:  # compared with the mode's own score (cosine, BM25 or RRF)
                ranked = [(cid, score) for cid, score in ranked if score >= min_score]
            rankings.append(ranked)
            owners.update({cid: corpus.name for cid, _ in ranked})
        if len(rankings) == 1:
            merged = rankings[0][:k]
        else:
            merged = reciprocal_rank_fusion(rankings, k)
        hits = self._hydrate(merged, owners)
        return hits, time.perf_counter() - started

    def _hydrate(self, ranked: list[tuple[int, float]], owners: dict[int, str]) -> list[Hit]:
        if not ranked:
            return []
        ids = [cid for cid, _ in ranked]
        with self.sessions() as session:  # plain columns: no ORM objects to build per hit
            rows = {row.id: row for row in session.execute(
                select(Chunk.id, Chunk.text, Document.external_id, Document.doc_metadata)
                .join(Document, Chunk.document_id == Document.id).where(Chunk.id.in_(ids)))}
        hits = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None:  # deleted between search and hydration
                continue
            hits.append(Hit(owners[cid], row.external_id, cid, float(score), row.text,
                            row.doc_metadata or {}))
        return hits
