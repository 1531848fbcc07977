"""Index rebuild: apply new chunking settings (chunk size, overlap, contextual headers) to an
existing corpus without downtime.

Every document is extracted again from its kept raw upload, chunked with the new settings,
embedded, and the result published as a new index generation through the same durable path as
ingestion (indexer/publisher.py). Searches answer from the current generation until the publish's
SQL commit moves the pointer; the corpus row takes the new settings in that same commit, and the
old generation's files are removed after it. Nothing is committed before that switch, so a
rebuild interrupted by a crash is simply run again.

A document that cannot be rebuilt (its raw upload was not kept, is gone, or no longer extracts)
is reported as a job error and stays as it was; when no document can be rebuilt the job fails
and the corpus is left exactly as it was.
"""

from collections import defaultdict
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from adapters_store.corpus_repo import touch
from adapters_store.models import Chunk, Corpus, Document, Job, JobStatus
from indexer.chunking import Chunker
from indexer.extract import ExtractionError, extract
from indexer.pipeline import IN_BATCH, PendingDocument, chunk_all, embed, set_progress, text_sha256
from indexer.publisher import publish_change
from indexer.registry import CorpusEntry, CorpusRegistry

SETTINGS = ("chunk_size", "chunk_overlap", "contextual_headers")
NOT_KEPT = ("its raw upload was not kept (it was ingested before graft kept uploads); "
            "upload it again to rebuild it")


def rebuild(sessions: sessionmaker[Session], registry: CorpusRegistry, limits, job_id: str,
            corpus: Corpus, entry: CorpusEntry, params: dict) -> None:
    """Run rebuild job `job_id` of `corpus` (the caller holds `entry.write_lock`). `params` holds
    the new settings; one it lacks keeps the corpus's current value."""
    settings = {name: params.get(name, getattr(corpus, name)) for name in SETTINGS}
    with sessions() as session:
        rows = list(session.scalars(select(Document).where(Document.corpus_id == corpus.id)
                                    .order_by(Document.id)))
    set_progress(sessions, job_id, documents_total=len(rows), documents_done=0, chunks_total=0,
                 chunks_done=0, errors=[])
    documents, errors = extract_again(rows, limits)
    if rows and not documents:
        _finish(sessions, job_id, errors, reason="no document could be rebuilt; see errors")
        return

    embedder = entry.searcher.embedder
    chunk_all(documents, Chunker(embedder.tokenizer, settings["chunk_size"], settings["chunk_overlap"]),
              settings["contextual_headers"])
    texts = [t for d in documents for t in d.indexed_texts()]
    set_progress(sessions, job_id, chunks_total=len(texts), errors=errors)
    vectors = embed(embedder, texts, limits.embed_batch,
                    lambda done: set_progress(sessions, job_id, chunks_done=done))

    rebuilt = [d.replaces for d in documents]
    with sessions() as session:
        remove_ids = [cid for part in _batches(rebuilt) for cid in session.scalars(
            select(Chunk.id).where(Chunk.document_id.in_(part)))]
    generation = (entry.generation or 0) + 1 if documents else entry.generation
    result = {"generation": generation, "documents": len(documents), "chunks": len(texts), **settings}

    def apply_rows(session: Session) -> None:
        for part in _batches(rebuilt):
            session.execute(delete(Chunk).where(Chunk.document_id.in_(part)))
        for d in documents:
            row = session.get(Document, d.replaces)
            row.content_sha256, row.doc_metadata, row.bytes = d.sha256, d.metadata, d.bytes
            row.chunk_count = len(d.chunks)
            session.add_all(d.chunk_rows(corpus.id, row.id))
        target = session.get(Corpus, corpus.id)
        for name, value in settings.items():
            setattr(target, name, value)
        _finish_in(session, job_id, errors, result=result, done=len(documents))

    if documents:
        publish_change(sessions, registry, entry, remove_ids=remove_ids, add_ids=[i for d in documents
                       for i in d.chunk_ids(corpus.id)], add_vectors=vectors, add_texts=texts,
                       apply_rows=apply_rows)
    else:  # an empty corpus: only its settings change
        with sessions() as session, session.begin():
            if session.get(Corpus, corpus.id) is None:
                raise LookupError("the corpus was deleted while it was being rebuilt")
            apply_rows(session)


def extract_again(rows: list[Document], limits) -> tuple[list[PendingDocument], list[dict]]:
    """The documents as their kept raw uploads give them now (each raw upload read once: a JSONL
    file holds several), and an error for each document that cannot be rebuilt."""
    groups: dict[tuple, list[Document]] = defaultdict(list)
    for row in rows:
        groups[(row.raw_path, row.raw_kind)].append(row)
    documents, errors = [], []
    for (path, kind), group in groups.items():
        if path is None or kind is None:
            errors += [_error(row, NOT_KEPT) for row in group]
            continue
        try:
            extracted = extract(kind, Path(path).read_bytes(), max_pdf_pages=limits.max_pdf_pages,
                                timeout_s=limits.extract_timeout_s)
        except OSError:
            errors += [_error(row, "its raw upload is missing; upload it again") for row in group]
            continue
        except ExtractionError as exc:
            errors += [_error(row, f"its raw upload no longer extracts: {exc}") for row in group]
            continue
        by_id = {doc.id or text_sha256(doc.text): doc for doc in extracted} if kind == "jsonl" else None
        for row in group:
            doc = by_id.get(row.external_id) if by_id is not None else extracted[0]
            if doc is None:
                errors.append(_error(row, "it is no longer in its raw upload"))
                continue
            pending = PendingDocument.of(doc, row.external_id, {**(row.doc_metadata or {}), **doc.metadata},
                                         kind, path)
            pending.replaces = row.id
            documents.append(pending)
    return documents, errors


def _error(row: Document, message: str) -> dict:
    return {"file": (row.doc_metadata or {}).get("filename"), "document_id": row.external_id,
            "error": message}


def _batches(values: list) -> list[list]:
    return [values[start:start + IN_BATCH] for start in range(0, len(values), IN_BATCH)]


def _finish_in(session: Session, job_id: str, errors: list[dict], *, result: dict | None = None,
               done: int = 0, reason: str | None = None) -> None:
    job = session.get(Job, job_id)
    job.documents_done, job.chunks_done = done, job.chunks_total
    job.errors, job.result, job.reason = errors, result, reason
    job.status = JobStatus.FAILED if reason else JobStatus.SUCCEEDED
    touch(job)


def _finish(sessions: sessionmaker[Session], job_id: str, errors: list[dict], reason: str) -> None:
    with sessions() as session, session.begin():
        _finish_in(session, job_id, errors, reason=reason)
