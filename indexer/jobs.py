"""Ingestion jobs: stored raw uploads → text → chunks → embeddings → a new index generation.

Jobs run one at a time in a worker thread, so request handling keeps the event loop. A job is
idempotent: chunk ids derive from (corpus, document, content, position) and unchanged documents
are skipped, so a job interrupted by a crash is simply run again at start-up.
"""

import asyncio
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.corpus_repo import touch, unfinished_jobs
from adapters_store.models import Chunk, Corpus, Document, Job, JobItem, utcnow
from indexer.chunking import Chunker
from indexer.extract import ExtractionError, extract
from indexer.publisher import publish_change
from indexer.registry import CorpusEntry, CorpusRegistry

log = logging.getLogger(__name__)


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
    replaces: int | None = None  # documents.id of the version it replaces
    chunks: list = field(default_factory=list)


@dataclass
class IngestLimits:
    max_pdf_pages: int = 2000
    extract_timeout_s: float = 60.0
    embed_batch: int = 64


class IngestionWorker:
    def __init__(self, sessions: sessionmaker[Session], registry: CorpusRegistry, limits: IngestLimits):
        self.sessions = sessions
        self.registry = registry
        self.limits = limits
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        with self.sessions() as session:
            for job in unfinished_jobs(session):
                log.info("resuming ingestion job %s", job.id)
                self._queue.put_nowait(job.id)
        self._task = asyncio.create_task(self._loop(), name="ingestion-worker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def submit(self, job_id: str) -> None:
        self._queue.put_nowait(job_id)

    async def wait_idle(self) -> None:
        await self._queue.join()

    async def _loop(self) -> None:
        while True:
            job_id = await self._queue.get()
            try:
                await asyncio.to_thread(self.run_job, job_id)
            except Exception:
                log.exception("ingestion job %s crashed", job_id)
            finally:
                self._queue.task_done()

    def run_job(self, job_id: str) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if job is None or job.status in ("succeeded", "failed"):
                return
            corpus = session.get(Corpus, job.corpus_id)
            if corpus is None:
                job.status, job.reason = "failed", "the corpus was deleted"
                return
            job.status, job.reason = "running", None
            touch(job)
        entry = self.registry.entry_for(corpus)
        with entry.write_lock:
            try:
                self._ingest(job_id, corpus, entry)
            except Exception as exc:
                log.exception("ingestion job %s failed", job_id)
                self._finish(job_id, "failed", reason=f"{exc.__class__.__name__}: {exc}")

    def _ingest(self, job_id: str, corpus: Corpus, entry: CorpusEntry) -> None:
        with self.sessions() as session:
            items = list(session.scalars(select(JobItem).where(JobItem.job_id == job_id)
                                         .order_by(JobItem.id)))
        documents, errors, done_items = self._extract_all(items)
        documents = self._skip_unchanged(corpus.id, documents)
        embedder = entry.searcher.embedder
        self._chunk_all(documents, Chunker(embedder.tokenizer, corpus.chunk_size, corpus.chunk_overlap))
        texts = [c.text for d in documents for c in d.chunks]
        self._progress(job_id, chunks_total=len(texts), chunks_done=0, errors=errors)
        vectors = self._embed(job_id, embedder, texts)

        ids = [chunk_id(corpus.id, d.external_id, d.sha256, c.index) for d in documents for c in d.chunks]
        replaced = [d.replaces for d in documents if d.replaces is not None]
        with self.sessions() as session:
            remove_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(replaced))))

        def apply_rows(session: Session) -> None:
            if replaced:
                session.execute(delete(Chunk).where(Chunk.document_id.in_(replaced)))
                session.execute(delete(Document).where(Document.id.in_(replaced)))
            position = 0
            for d in documents:
                row = Document(corpus_id=corpus.id, external_id=d.external_id, content_sha256=d.sha256,
                               doc_metadata=d.metadata, bytes=d.bytes, chunk_count=len(d.chunks))
                session.add(row)
                session.flush()
                for c in d.chunks:
                    session.add(Chunk(id=ids[position], corpus_id=corpus.id, document_id=row.id,
                                      ordinal=c.index, text=c.text, start_char=c.start, end_char=c.end))
                    position += 1
            self._finish_in(session, job_id, done_items, errors)

        if documents:
            publish_change(self.sessions, self.registry, entry, remove_ids=remove_ids, add_ids=ids,
                           add_vectors=vectors, add_texts=texts, apply_rows=apply_rows)
        else:
            with self.sessions() as session, session.begin():
                self._finish_in(session, job_id, done_items, errors)
        for item in items:
            Path(item.raw_path).unlink(missing_ok=True)

    def _extract_all(self, items: list[JobItem]):
        documents: dict[str, PendingDocument] = {}
        errors: list[dict] = []
        done: list[int] = []
        for item in items:
            try:
                data = Path(item.raw_path).read_bytes()
                extracted = extract(item.kind, data, max_pdf_pages=self.limits.max_pdf_pages,
                                    timeout_s=self.limits.extract_timeout_s)
            except (ExtractionError, OSError) as exc:
                errors.append({"file": item.filename, "document_id": item.external_id,
                               "error": str(exc) if isinstance(exc, ExtractionError)
                               else "the stored upload is missing"})
                continue
            done.append(item.id)
            for doc in extracted:
                sha = hashlib.sha256(doc.text.encode()).hexdigest()
                external_id = doc.id or item.external_id or (
                    item.filename if item.kind != "jsonl" and item.filename else sha)
                metadata = {**item.item_metadata, **doc.metadata}
                documents[external_id] = PendingDocument(external_id, doc.text, sha, metadata,
                                                         len(doc.text.encode()), item.kind)
        return list(documents.values()), errors, done

    @staticmethod
    def _chunk_all(documents: list[PendingDocument], chunker: Chunker) -> None:
        """Chunk on every core: the splitter releases the GIL (2 threads: 1.9x on 2 cores)."""
        def split(document: PendingDocument) -> list:
            return [c for c in chunker.split(document.text, document.kind) if c.text.strip()]

        with ThreadPoolExecutor(max_workers=max(1, min(len(documents), os.cpu_count() or 1))) as pool:
            for document, chunks in zip(documents, pool.map(split, documents)):
                document.chunks = chunks

    def _skip_unchanged(self, corpus_id: int, documents: list[PendingDocument]) -> list[PendingDocument]:
        if not documents:
            return []
        with self.sessions() as session:
            existing = {d.external_id: d for d in session.scalars(select(Document).where(
                Document.corpus_id == corpus_id,
                Document.external_id.in_([d.external_id for d in documents])))}
        changed = []
        for document in documents:
            old = existing.get(document.external_id)
            if old is not None and old.content_sha256 == document.sha256:
                continue  # same content again: nothing to index
            document.replaces = old.id if old is not None else None
            changed.append(document)
        return changed

    def _embed(self, job_id: str, embedder, texts: list[str]) -> np.ndarray:
        batch = max(self.limits.embed_batch, 1) * 4  # progress granularity, not the model batch
        parts = []
        for start in range(0, len(texts), batch):
            parts.append(embedder.encode(texts[start:start + batch], batch_size=self.limits.embed_batch))
            self._progress(job_id, chunks_done=min(start + batch, len(texts)))
        if not parts:
            return np.zeros((0, embedder.dimension), dtype=np.float32)
        return np.concatenate(parts)

    def _progress(self, job_id: str, **fields) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            for name, value in fields.items():
                setattr(job, name, value)
            touch(job)

    def _finish_in(self, session: Session, job_id: str, done_items: list[int], errors: list[dict]) -> None:
        job = session.get(Job, job_id)
        for item in job.items:
            item.status = "done" if item.id in done_items else "failed"
        job.documents_done = len(done_items)
        job.chunks_done = job.chunks_total
        job.errors = errors
        job.status = "succeeded" if done_items or not job.items else "failed"
        job.reason = None if done_items else "no file could be indexed; see errors"
        job.updated_at = utcnow()

    def _finish(self, job_id: str, status: str, reason: str) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if job is not None:
                job.status, job.reason = status, reason
                touch(job)
