"""SQL access for corpora, documents, chunks and ingestion jobs."""

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters_store import tenancy
from adapters_store.errors import Conflict, Invalid, NotFound
from adapters_store.models import (UNFINISHED_STATUSES, Chunk, Corpus, Document, IndexGeneration, Job, JobItem,
                                   JobKind, JobStatus, utcnow)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 16, 4096  # tokens of the corpus's embedder


@dataclass
class CorpusStats:
    corpus: Corpus
    documents: int
    chunks: int
    bytes: int

    def as_dict(self) -> dict:
        c = self.corpus
        return {"object": "corpus", "name": c.name, "documents": self.documents, "chunks": self.chunks,
                "generation": c.current_generation, "bytes": self.bytes, "chunk_size": c.chunk_size,
                "chunk_overlap": c.chunk_overlap, "contextual_headers": c.contextual_headers,
                "embedding_model": c.embedding_model, "created_at": int(c.created_at.timestamp())}


def create_corpus(session: Session, name: str, chunk_size: int, chunk_overlap: int,
                  embedding_model: str, contextual_headers: bool = False) -> Corpus:
    check_chunking(chunk_size, chunk_overlap)
    corpus = Corpus(name=name, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                    embedding_model=embedding_model, contextual_headers=contextual_headers)
    session.add(corpus)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"corpus {name!r} already exists", param="name", code="corpus_exists") from exc
    return corpus


def check_chunking(chunk_size: int, chunk_overlap: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise Invalid(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}, got {chunk_size}",
                      param="chunk_size")
    if not 0 <= chunk_overlap < chunk_size:
        raise Invalid(f"chunk_overlap ({chunk_overlap}) must be at least 0 and smaller than chunk_size "
                      f"({chunk_size})", param="chunk_overlap")


def get_corpus(session: Session, name: str) -> Corpus:
    corpus = session.scalar(select(Corpus).where(Corpus.name == name))
    if corpus is None:
        raise NotFound(f"corpus {name!r} does not exist", param="corpus", code="corpus_not_found")
    return corpus


def corpus_stats(session: Session, corpus: Corpus) -> CorpusStats:
    documents, size, chunks = session.execute(
        select(func.count(Document.id), func.coalesce(func.sum(Document.bytes), 0),
               func.coalesce(func.sum(Document.chunk_count), 0))
        .where(Document.corpus_id == corpus.id)).one()
    return CorpusStats(corpus, documents, int(chunks), int(size))


def list_corpora(session: Session) -> list[CorpusStats]:
    return [corpus_stats(session, c) for c in session.scalars(select(Corpus).order_by(Corpus.name))]


def delete_corpus(session: Session, corpus: Corpus) -> None:
    # Bulk deletes: the ORM cascade would load every chunk into memory first.
    for model in (Chunk, Document, IndexGeneration, Job):
        session.execute(delete(model).where(model.corpus_id == corpus.id))
    session.delete(corpus)


def list_documents(session: Session, corpus: Corpus, limit: int, after: str | None,
                   keep: Callable[[dict], bool] | None = None) -> list[Document]:
    """Up to `limit` documents by id after `after`; with `keep`, only those whose metadata it keeps
    (read on in pages until `limit` are kept or none are left)."""
    found: list[Document] = []
    while True:
        query = select(Document).where(Document.corpus_id == corpus.id)
        if after:
            query = query.where(Document.external_id > after)
        page = list(session.scalars(query.order_by(Document.external_id).limit(limit)))
        found += page if keep is None else [d for d in page if keep(d.doc_metadata or {})]
        if keep is None or len(found) >= limit or len(page) < limit:
            return found[:limit]
        after = page[-1].external_id


def get_document(session: Session, corpus: Corpus, external_id: str,
                 visible: Callable[[dict], bool] | None = None) -> Document:
    """The document; with `visible` (a key's document filter), one the key may see: a hidden
    document is as missing as one that does not exist, for every operation."""
    document = session.scalar(select(Document).where(Document.corpus_id == corpus.id,
                                                     Document.external_id == external_id))
    if document is None or (visible is not None and not visible(document.doc_metadata or {})):
        raise NotFound(f"document {external_id!r} does not exist in corpus {corpus.name!r}",
                       param="document_id", code="document_not_found")
    return document


def check_replaceable(session: Session, corpus: Corpus, external_ids: list[str],
                      visible: Callable[[dict], bool] | None) -> None:
    """An upload by a key with a document filter may not replace a document the filter hides
    (404, as for any operation on it); ids only known after extraction (JSONL) are checked by the
    ingestion job with the same filter (Job.params["filter"])."""
    if visible is None or not external_ids:
        return
    for document in session.scalars(select(Document).where(Document.corpus_id == corpus.id,
                                                           Document.external_id.in_(set(external_ids)))):
        if not visible(document.doc_metadata or {}):
            raise NotFound(f"document {document.external_id!r} does not exist in corpus {corpus.name!r}",
                           param="document_id", code="document_not_found")


def document_as_dict(document: Document) -> dict:
    return {"object": "document", "id": document.external_id, "sha256": document.content_sha256,
            "chunks": document.chunk_count, "bytes": document.bytes, "metadata": document.doc_metadata,
            "updated_at": int(document.updated_at.timestamp())}


def document_text(session: Session, document: Document) -> str:
    """The document's extracted text, stitched back from its chunks (which overlap: each adds what
    lies past the end of the ones before it)."""
    text, end = [], 0
    for chunk in session.scalars(select(Chunk).where(Chunk.document_id == document.id).order_by(Chunk.ordinal)):
        if chunk.end_char > end:
            text.append(chunk.text[max(0, end - chunk.start_char):])
            end = chunk.end_char
    return "".join(text)


def chunk_ids_of(session: Session, document_ids: list[int]) -> list[int]:
    if not document_ids:
        return []
    return list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(document_ids))))


def create_job(session: Session, corpus: Corpus, items: list[JobItem], document_filter: dict | None = None) -> Job:
    """A queued ingestion; `document_filter` (the uploading key's) bounds which documents it may replace."""
    job = Job(id=str(uuid.uuid4()), corpus_id=corpus.id, status=JobStatus.QUEUED,
              documents_total=len(items), items=items, tenant=tenancy.tenant_of(corpus.name),
              params={"filter": document_filter} if document_filter is not None else None)
    session.add(job)
    session.flush()
    return job


def create_rebuild_job(session: Session, corpus: Corpus, chunk_size: int | None = None,
                       chunk_overlap: int | None = None, contextual_headers: bool | None = None) -> Job:
    """A queued index rebuild of `corpus`; a setting not given keeps the corpus's value."""
    size = chunk_size if chunk_size is not None else corpus.chunk_size
    overlap = chunk_overlap if chunk_overlap is not None else corpus.chunk_overlap
    if chunk_overlap is None and overlap >= size:
        raise Invalid(f"the corpus's chunk_overlap ({overlap}) is not smaller than the new chunk_size ({size}): "
                      "give chunk_overlap too", param="chunk_overlap")
    check_chunking(size, overlap)
    headers = contextual_headers if contextual_headers is not None else corpus.contextual_headers
    documents = session.scalar(select(func.count(Document.id)).where(Document.corpus_id == corpus.id))
    job = Job(id=str(uuid.uuid4()), kind=JobKind.REBUILD, corpus_id=corpus.id, status=JobStatus.QUEUED,
              documents_total=documents, errors=[], tenant=tenancy.tenant_of(corpus.name),
              params={"chunk_size": size, "chunk_overlap": overlap, "contextual_headers": headers})
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return job


def job_as_dict(job: Job) -> dict:
    if job.kind in (JobKind.INGEST, JobKind.REBUILD):
        progress = {"documents_done": job.documents_done, "documents_total": job.documents_total,
                    "chunks_done": job.chunks_done, "chunks_total": job.chunks_total}
    elif job.kind == JobKind.EVAL:  # questions answered, counted in the documents columns
        progress = {"done": job.documents_done, "total": job.documents_total}
    else:  # a training's stage, step, loss, tokens/s and ETA
        progress = job.progress or {}
    return {"object": "job", "id": job.id, "kind": job.kind, "status": job.status, "progress": progress,
            "errors": job.errors or [], "reason": job.reason, "result": job.result,
            "created_at": int(job.created_at.timestamp()), "updated_at": int(job.updated_at.timestamp())}


def list_jobs(session: Session, *, tenant: str | None, every_tenant: bool, kind: str | None = None,
              status: str | None = None, limit: int = 100, after: str | None = None) -> list[Job]:
    """Newest first, of one tenant (or every tenant's: a global admin); `after` a job id: the jobs
    older than it (the next page). An `after` that names no job the caller can see is invalid
    (the same answer whether it exists for another tenant or not at all)."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if not every_tenant:
        query = query.where(Job.tenant == tenant)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        cursor = session.get(Job, after)
        if cursor is None or (not every_tenant and cursor.tenant != tenant):
            raise Invalid(f"after: {after!r} is not the id of a job in this listing", param="after")
        query = query.where((Job.created_at < cursor.created_at)
                            | ((Job.created_at == cursor.created_at) & (Job.id < cursor.id)))
    return list(session.scalars(query))


def unfinished_jobs(session: Session, kinds: tuple[JobKind, ...] = (JobKind.INGEST,)) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status.in_(list(UNFINISHED_STATUSES)), Job.kind.in_(kinds))
                                .order_by(Job.created_at)))


def touch(job: Job) -> None:
    job.updated_at = utcnow()
