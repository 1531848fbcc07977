"""Corpus jobs: ingestion (stored raw uploads → text → chunks → embeddings → a new index
generation) and index rebuilds (indexer/rebuild.py), on one queue.

Jobs run one at a time in a worker thread, so request handling keeps the event loop, and a
gateway never builds two generations of a corpus at once. A job is idempotent: chunk ids derive
from (corpus, document, content, position) and unchanged documents are skipped, so a job
interrupted by a crash is simply run again at start-up.

The raw upload of every live document is kept (Document.raw_path) so a rebuild can extract it
again; an upload no document uses is deleted once the job's change is committed.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.corpus_repo import touch, unfinished_jobs
from adapters_store.models import UNFINISHED_STATUSES, Chunk, Corpus, Document, Job, JobItem, JobKind, JobStatus, utcnow
from indexer.chunking import Chunker
from indexer import filters
from indexer.extract import ExtractionError, extract
from indexer.filters import MetadataFilter
from indexer.pipeline import PendingDocument, chunk_all, drop_unused_raw, embed, set_progress, text_sha256
from indexer.publisher import publish_change
from indexer.rebuild import rebuild
from indexer.registry import CorpusEntry, CorpusRegistry

log = logging.getLogger(__name__)

KINDS = (JobKind.INGEST, JobKind.REBUILD)  # the job kinds this worker runs


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
            for job in unfinished_jobs(session, kinds=KINDS):
                log.info("resuming %s job %s", job.kind, job.id)
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
                log.exception("job %s crashed", job_id)
            finally:
                self._queue.task_done()

    def run_job(self, job_id: str) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if job is None or job.status not in UNFINISHED_STATUSES or job.kind not in KINDS:
                return
            kind, params = job.kind, dict(job.params or {})
            corpus = session.get(Corpus, job.corpus_id) if job.corpus_id is not None else None
            if corpus is None:
                job.status, job.reason = JobStatus.FAILED, "the corpus was deleted"
                return
            job.status, job.reason = JobStatus.RUNNING, None
            touch(job)
        entry = self.registry.entry_for(corpus)
        with entry.write_lock:
            try:
                if kind == JobKind.REBUILD:
                    rebuild(self.sessions, self.registry, self.limits, job_id, corpus, entry, params)
                else:
                    self._ingest(job_id, corpus, entry, params)
            except Exception as exc:
                log.exception("%s job %s failed", kind, job_id)
                self._finish(job_id, JobStatus.FAILED, reason=f"{exc.__class__.__name__}: {exc}")

    def _ingest(self, job_id: str, corpus: Corpus, entry: CorpusEntry, params: dict) -> None:
        with self.sessions() as session:
            items = list(session.scalars(select(JobItem).where(JobItem.job_id == job_id)
                                         .order_by(JobItem.id)))
        documents, errors, done_items = self._extract_all(items)
        uploader_filter = filters.parse(params.get("filter"), param="job.filter")
        documents, adopted, hidden = self._skip_unchanged(corpus.id, documents, uploader_filter)
        errors += [{"document_id": d.external_id, "error": f"document {d.external_id!r} does not exist"}
                   for d in hidden]
        embedder = entry.searcher.embedder
        chunk_all(documents, Chunker(embedder.tokenizer, corpus.chunk_size, corpus.chunk_overlap),
                  corpus.contextual_headers)
        texts = [t for d in documents for t in d.indexed_texts()]
        self._progress(job_id, chunks_total=len(texts), chunks_done=0, errors=errors)
        vectors = embed(embedder, texts, self.limits.embed_batch,
                        lambda done: self._progress(job_id, chunks_done=done))

        ids = [i for d in documents for i in d.chunk_ids(corpus.id)]
        replaced = [d.replaces for d in documents if d.replaces is not None]
        with self.sessions() as session:
            remove_ids = list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(replaced))))
            old_raw = list(session.scalars(select(Document.raw_path).where(Document.id.in_(replaced))))

        def apply_rows(session: Session) -> None:
            if replaced:
                session.execute(delete(Chunk).where(Chunk.document_id.in_(replaced)))
                session.execute(delete(Document).where(Document.id.in_(replaced)))
            for d in documents:
                row = Document(corpus_id=corpus.id, external_id=d.external_id, content_sha256=d.sha256,
                               doc_metadata=d.metadata, bytes=d.bytes, chunk_count=len(d.chunks),
                               raw_path=d.raw_path, raw_kind=d.kind)
                session.add(row)
                session.flush()
                session.add_all(d.chunk_rows(corpus.id, row.id))
            self._adopt_raw(session, adopted)
            self._finish_in(session, job_id, done_items, errors)

        if documents:
            publish_change(self.sessions, self.registry, entry, remove_ids=remove_ids, add_ids=ids,
                           add_vectors=vectors, add_texts=texts, apply_rows=apply_rows)
        else:
            with self.sessions() as session, session.begin():
                self._adopt_raw(session, adopted)
                self._finish_in(session, job_id, done_items, errors)
        drop_unused_raw(self.sessions, [item.raw_path for item in items] + old_raw)

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
                external_id = doc.id or item.external_id or (
                    item.filename if item.kind != "jsonl" and item.filename else text_sha256(doc.text))
                documents[external_id] = PendingDocument.of(doc, external_id, {**item.item_metadata, **doc.metadata},
                                                            item.kind, item.raw_path)
        return list(documents.values()), errors, done

    def _skip_unchanged(self, corpus_id: int, documents: list[PendingDocument], uploader_filter: MetadataFilter | None
                        ) -> tuple[list[PendingDocument], list[tuple[int, str, str]], list[PendingDocument]]:
        """The documents to index (new, or with new content or metadata); (row id, raw path, kind)
        for unchanged ones that keep no raw upload yet (ingested before uploads were kept): they
        take this one's, for rebuilds; and those that would replace a document the uploading key's
        filter hides (left as they are: a hidden document does not exist for that key)."""
        if not documents:
            return [], [], []
        with self.sessions() as session:
            existing = {d.external_id: d for d in session.scalars(select(Document).where(
                Document.corpus_id == corpus_id,
                Document.external_id.in_([d.external_id for d in documents])))}
        changed, adopted, hidden = [], [], []
        for document in documents:
            old = existing.get(document.external_id)
            if old is not None and uploader_filter is not None and not uploader_filter.matches(old.doc_metadata):
                hidden.append(document)
                continue
            # New metadata alone is a change too: filters (document-level access) read it.
            if old is not None and old.content_sha256 == document.sha256 \
                    and (old.doc_metadata or {}) == document.metadata:
                if old.raw_path is None or not Path(old.raw_path).is_file():
                    adopted.append((old.id, document.raw_path, document.kind))
                continue  # same content and metadata again: nothing to index
            document.replaces = old.id if old is not None else None
            changed.append(document)
        return changed, adopted, hidden

    @staticmethod
    def _adopt_raw(session: Session, adopted: list[tuple[int, str, str]]) -> None:
        for row_id, raw_path, kind in adopted:
            session.execute(update(Document).where(Document.id == row_id)
                            .values(raw_path=raw_path, raw_kind=kind))

    def _progress(self, job_id: str, **fields) -> None:
        set_progress(self.sessions, job_id, **fields)

    def _finish_in(self, session: Session, job_id: str, done_items: list[int], errors: list[dict]) -> None:
        job = session.get(Job, job_id)
        for item in job.items:
            item.status = "done" if item.id in done_items else "failed"
        job.documents_done = len(done_items)
        job.chunks_done = job.chunks_total
        job.errors = errors
        job.status = JobStatus.SUCCEEDED if done_items or not job.items else JobStatus.FAILED
        job.reason = None if done_items else "no file could be indexed; see errors"
        job.updated_at = utcnow()

    def _finish(self, job_id: str, status: str, reason: str) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if job is not None:
                job.status, job.reason = status, reason
                touch(job)
