"""SQL access for corpora, documents, chunks and ingestion jobs."""

import re
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters_store.errors import Conflict, NotFound
from adapters_store.models import Chunk, Corpus, Document, IndexGeneration, Job, JobItem, utcnow

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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
                "chunk_overlap": c.chunk_overlap, "embedding_model": c.embedding_model,
                "created_at": int(c.created_at.timestamp())}


def create_corpus(session: Session, name: str, chunk_size: int, chunk_overlap: int,
                  embedding_model: str) -> Corpus:
    corpus = Corpus(name=name, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                    embedding_model=embedding_model)
    session.add(corpus)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"corpus {name!r} already exists", param="name", code="corpus_exists") from exc
    return corpus


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


def list_documents(session: Session, corpus: Corpus, limit: int, after: str | None) -> list[Document]:
    query = select(Document).where(Document.corpus_id == corpus.id)
    if after:
        query = query.where(Document.external_id > after)
    return list(session.scalars(query.order_by(Document.external_id).limit(limit)))


def get_document(session: Session, corpus: Corpus, external_id: str) -> Document:
    document = session.scalar(select(Document).where(Document.corpus_id == corpus.id,
                                                     Document.external_id == external_id))
    if document is None:
        raise NotFound(f"document {external_id!r} does not exist in corpus {corpus.name!r}",
                       param="document_id", code="document_not_found")
    return document


def document_as_dict(document: Document) -> dict:
    return {"object": "document", "id": document.external_id, "sha256": document.content_sha256,
            "chunks": document.chunk_count, "bytes": document.bytes, "metadata": document.doc_metadata,
            "updated_at": int(document.updated_at.timestamp())}


def chunk_ids_of(session: Session, document_ids: list[int]) -> list[int]:
    if not document_ids:
        return []
    return list(session.scalars(select(Chunk.id).where(Chunk.document_id.in_(document_ids))))


def create_job(session: Session, corpus: Corpus, items: list[JobItem]) -> Job:
    job = Job(id=str(uuid.uuid4()), corpus_id=corpus.id, status="queued",
              documents_total=len(items), items=items)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return job


def job_as_dict(job: Job) -> dict:
    return {"object": "job", "id": job.id, "status": job.status,
            "progress": {"documents_done": job.documents_done, "documents_total": job.documents_total,
                         "chunks_done": job.chunks_done, "chunks_total": job.chunks_total},
            "errors": job.errors, "reason": job.reason,
            "created_at": int(job.created_at.timestamp()), "updated_at": int(job.updated_at.timestamp())}


def unfinished_jobs(session: Session) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.status.in_(("queued", "running")))
                                .order_by(Job.created_at)))


def touch(job: Job) -> None:
    job.updated_at = utcnow()
