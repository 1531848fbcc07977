"""Search one or more corpora, named, for a query and return hydrated hits (text, document, metadata).

Document-level access: a search takes the filters that apply to it (a domain's, the API key's, the
request's) and searches with their intersection, computed here and nowhere else on the request
path (indexer.filters.intersect); each corpus applies it inside its search.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, select

from adapters_store.errors import NotFound
from adapters_store.models import Chunk, Corpus, Document
from indexer.filters import MetadataFilter, intersect
from indexer.hybrid import reciprocal_rank_fusion
from indexer.registry import CorpusRegistry

# Built once: constructing a statement costs more than SQLite takes to run it. Plain columns on a
# connection, no ORM session: per request this is a few hundred microseconds less.
_CORPORA_BY_NAME = select(Corpus.id, Corpus.name, Corpus.embedding_model, Corpus.current_generation,
                          Corpus.created_at).where(Corpus.name.in_(bindparam("names", expanding=True)))
_HITS_BY_CHUNK_ID = (select(Chunk.id, Chunk.text, Document.external_id,
                            Document.doc_metadata.label("metadata"))
                     .join(Document, Chunk.document_id == Document.id)
                     .where(Chunk.id.in_(bindparam("ids", expanding=True))))


class UnknownCorpus(NotFound):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"corpus {name!r} does not exist", param="corpus", code="corpus_not_found")


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
    def __init__(self, db: Engine, registry: CorpusRegistry):
        self.db = db
        self.registry = registry

    def search(self, names: list[str], query: str, k: int, mode: str,
               min_score: float | None = None, *, may_load: bool = True,
               filters: Sequence[MetadataFilter | None] = ()) -> tuple[list[Hit], float]:
        """Top-k hits over the corpora `names` (fused by rank when there are several), and
        seconds spent. Raises UnknownCorpus for a name no corpus has; with `may_load` false,
        NotLoaded for a corpus whose index (or embedding model) would have to be read first.
        With `filters`, only chunks of documents that all of them allow are searched."""
        started = time.perf_counter()
        corpora = self._lookup(names)
        allowed = intersect(*filters)
        if allowed is not None and allowed.matches_nothing:
            return [], time.perf_counter() - started
        vectors: dict[str, object] = {}  # one query embedding per embedding model
        rankings, owners = [], {}
        for corpus in corpora:
            searcher = self.registry.entry_for(corpus, may_load=may_load).searcher
            if mode != "bm25" and corpus.embedding_model not in vectors:
                vectors[corpus.embedding_model] = searcher.embedder.encode([query])[0]
            ranked = searcher.search(query, k, mode, query_vector=vectors.get(corpus.embedding_model),
                                     filter=allowed)
            if min_score is not None:  # compared with the mode's own score (cosine, BM25 or RRF)
                ranked = [(cid, score) for cid, score in ranked if score >= min_score]
            rankings.append(ranked)
            owners.update({cid: corpus.name for cid, _ in ranked})
        if len(rankings) == 1:
            merged = rankings[0][:k]
        else:
            merged = reciprocal_rank_fusion(rankings, k)
        hits = self._hydrate(merged, owners, allowed)
        return hits, time.perf_counter() - started

    def _lookup(self, names: list[str]) -> list:
        """The corpora's rows (id, name, embedding_model, current_generation, created_at)."""
        with self.db.connect() as connection:
            found = {row.name: row for row in connection.execute(_CORPORA_BY_NAME, {"names": names})}
        for name in names:
            if name not in found:
                raise UnknownCorpus(name)
        return [found[n] for n in names]

    def _hydrate(self, ranked: list[tuple[int, float]], owners: dict[int, str],
                 allowed: MetadataFilter | None = None) -> list[Hit]:
        if not ranked:
            return []
        with self.db.connect() as connection:
            rows = {row.id: row for row in connection.execute(
                _HITS_BY_CHUNK_ID, {"ids": [cid for cid, _ in ranked]})}
        hits = []
        for cid, score in ranked:
            row = rows.get(cid)
            if row is None:  # deleted between search and hydration
                continue
            if allowed is not None and not allowed.matches(row.metadata):
                continue  # never expected (the search was filtered); a last check on what SQL holds now
            hits.append(Hit(owners[cid], row.external_id, cid, float(score), row.text,
                            row.metadata or {}))
        return hits
