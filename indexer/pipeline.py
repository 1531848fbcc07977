"""The steps ingestion and index rebuilds share: documents as extracted, chunked with their
contextual headers, embedded with job progress, and their raw uploads kept while a document uses them."""

import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.corpus_repo import touch
from adapters_store.models import Chunk, Document, Job
from indexer.chunking import Chunker
from indexer.extract import EXTENSIONS, ExtractedDocument
from indexer.headers import Heading, chunk_headers, document_title, indexed_text

IN_BATCH = 500  # values per SQL IN list (SQLite bounds the variables of one statement)


def chunk_id(corpus_id: int, external_id: str, sha256: str, ordinal: int) -> int:
    digest = hashlib.blake2b(f"{corpus_id}\0{external_id}\0{sha256}\0{ordinal}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") & 0x7FFF_FFFF_FFFF_FFFF  # FAISS reserves -1


@dataclass
class PendingDocument:
    external_id: str
    text: str
    sha256: str
    metadata: dict
    bytes: int
    kind: str
    raw_path: str | None = None  # the kept raw upload it comes from
    title: str | None = None  # as extraction found it
    headings: list[Heading] = field(default_factory=list)
    replaces: int | None = None  # documents.id of the version it replaces
    chunks: list = field(default_factory=list)
    headers: list[str | None] = field(default_factory=list)  # one per chunk

    @classmethod
    def of(cls, doc: ExtractedDocument, external_id: str, metadata: dict, kind: str,
           raw_path: str | None) -> "PendingDocument":
        return cls(external_id, doc.text, text_sha256(doc.text), metadata, len(doc.text.encode()), kind,
                   raw_path, doc.title, doc.headings)

    def chunk_ids(self, corpus_id: int) -> list[int]:
        return [chunk_id(corpus_id, self.external_id, self.sha256, c.index) for c in self.chunks]

    def indexed_texts(self) -> list[str]:
        return [indexed_text(c.text, h) for c, h in zip(self.chunks, self.headers)]

    def chunk_rows(self, corpus_id: int, document_id: int) -> list[Chunk]:
        return [Chunk(id=cid, corpus_id=corpus_id, document_id=document_id, ordinal=c.index, text=c.text,
                      start_char=c.start, end_char=c.end, header=h)
                for cid, c, h in zip(self.chunk_ids(corpus_id), self.chunks, self.headers)]


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_all(documents: list[PendingDocument], chunker: Chunker, contextual_headers: bool) -> None:
    """Chunk on every core: the splitter releases the GIL (2 threads: 1.9x on 2 cores)."""
    def split(document: PendingDocument) -> list:
        return [c for c in chunker.split(document.text, document.kind) if c.text.strip()]

    with ThreadPoolExecutor(max_workers=max(1, min(len(documents), os.cpu_count() or 1))) as pool:
        for document, chunks in zip(documents, pool.map(split, documents)):
            document.chunks = chunks
            if contextual_headers:
                title = document_title(document.metadata, document.title, document.external_id,
                                       document.sha256, tuple(EXTENSIONS))
                document.headers = chunk_headers(title, document.headings, [c.start for c in chunks])
            else:
                document.headers = [None] * len(chunks)


def embed(embedder, texts: list[str], batch_size: int, on_progress: Callable[[int], None]) -> np.ndarray:
    """Vectors of texts; on_progress(done) after each slice of a few model batches."""
    step = max(batch_size, 1) * 4  # progress granularity, not the model batch
    parts = []
    for start in range(0, len(texts), step):
        parts.append(embedder.encode(texts[start:start + step], batch_size=batch_size))
        on_progress(min(start + step, len(texts)))
    if not parts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    return np.concatenate(parts)


def set_progress(sessions: sessionmaker[Session], job_id: str, **fields) -> None:
    with sessions() as session, session.begin():
        job = session.get(Job, job_id)
        for name, value in fields.items():
            setattr(job, name, value)
        touch(job)


def drop_unused_raw(sessions: sessionmaker[Session], paths: Iterable[str | None]) -> None:
    """Delete the raw uploads among paths that no document uses (after the change's commit)."""
    paths = sorted({p for p in paths if p})
    used: set[str] = set()
    with sessions() as session:
        for start in range(0, len(paths), IN_BATCH):
            used.update(session.scalars(select(Document.raw_path).where(
                Document.raw_path.in_(paths[start:start + IN_BATCH]))))
    for path in set(paths) - used:
        Path(path).unlink(missing_ok=True)
