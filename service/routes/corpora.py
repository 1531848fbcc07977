"""Corpora over REST: create, list, stats, delete, upload documents, delete documents, search,
rebuild the index with new chunking settings."""

import asyncio
import functools
import logging
import shutil

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from adapters_store import corpus_repo as repo
from adapters_store import tenancy
from adapters_store.durable import fsync_dir
from adapters_store.errors import Conflict, Invalid, Unavailable
from adapters_store.models import Corpus
from indexer import filters
from indexer.deletion import delete_document
from indexer.search import MAX_K, SearchMode
from service.auth import Principal
from service.http_body import json_body, request_body
from service.ingest_request import MAX_FILES, JsonDocuments, items_from_json, items_from_multipart
from service.responses import Corpus as CorpusAnswer
from service.responses import CorpusList, Deleted, DocumentList, JobAccepted, SearchResult, answers
from service.routes import Name, resolve
from service.routes.jobs import accepted
from service.state import GatewayState, admin_principal, get_state, inference_principal
from service.uploads import multipart_boundary

log = logging.getLogger(__name__)
router = APIRouter()
# The media types of the files an upload takes (a file's extension, when it has one, decides).
FILE_TYPES = ("text/plain", "text/markdown", "text/html", "application/pdf", "application/jsonl")


class Chunking(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk_size: int | None = Field(default=None, ge=repo.MIN_CHUNK_SIZE, le=repo.MAX_CHUNK_SIZE)
    chunk_overlap: int | None = Field(default=None, ge=0, le=1024)
    contextual_headers: StrictBool | None = None


class CorpusCreate(Chunking):
    name: str = Field(pattern=tenancy.FULL_NAME_PATTERN.pattern)
    embedding_model: str | None = Field(default=None, min_length=1, max_length=256)


class RebuildRequest(Chunking):
    """What to change; a setting left out keeps the corpus's value."""


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    k: int = Field(default=5, ge=1, le=MAX_K)
    mode: SearchMode = "hybrid"
    # {metadata_key: value | [values]}: narrows what the key's filter allows (indexer/filters.py).
    filter: filters.JsonFilter | None = None

    @model_validator(mode="after")
    def _query_not_blank(self):
        if not self.query.strip():
            raise ValueError("query must not be blank")
        return self


def _remove_corpus_files(state: GatewayState, corpus_id: int) -> None:
    state.registry.store.remove_corpus(corpus_id)
    shutil.rmtree(state.settings.uploads_dir / str(corpus_id), ignore_errors=True)


@router.post("/v1/corpora", status_code=201, responses=answers(CorpusAnswer, 201))
async def create_corpus(principal: Principal = Depends(admin_principal),
                        body: CorpusCreate = Depends(json_body(CorpusCreate)),
                        state: GatewayState = Depends(get_state)):
    name = principal.full_name(body.name, kind="corpus")
    s = state.settings
    size = body.chunk_size or s.default_chunk_size
    overlap = body.chunk_overlap if body.chunk_overlap is not None else min(s.default_chunk_overlap, size // 4)
    if overlap >= size:
        raise Invalid(f"chunk_overlap ({overlap}) must be smaller than chunk_size ({size})",
                      param="chunk_overlap")
    model = body.embedding_model or s.embedding_model
    if model not in s.embedding_models:  # the same answer for any name, path or folder not allowed
        raise Invalid("embedding_model is not one this gateway allows: leave it out for the default, or ask "
                      "the operator to allow it (GRAFT_ALLOWED_EMBEDDING_MODELS)", param="embedding_model")
    try:
        await asyncio.to_thread(state.registry.embedder, model)
    except (ValueError, OSError) as exc:  # an allowed model that fails is the operator's to fix: logged
        log.error("allowed embedding model %r cannot be loaded: %s", model, exc)
        raise Unavailable("the embedding model cannot be loaded on this gateway; see its log",
                          code="embedding_model_unavailable") from exc
    with state.sessions() as session, session.begin():
        corpus = repo.create_corpus(session, name, size, overlap, model, bool(body.contextual_headers))
        # SQLite may give the new corpus the id of a deleted one: files that one left behind (a
        # crash between its delete's commit and the file removal) must not become this one's.
        _remove_corpus_files(state, corpus.id)
        return repo.corpus_stats(session, corpus).as_dict()


@router.get("/v1/corpora", responses=answers(CorpusList))
async def list_corpora(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return {"object": "list", "data": [s.as_dict() for s in repo.list_corpora(session)
                                           if principal.sees(s.corpus.name)]}


@router.get("/v1/corpora/{name}", responses=answers(CorpusAnswer))
async def get_corpus(name: str = Depends(resolve.corpus_name), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return repo.corpus_stats(session, repo.get_corpus(session, name)).as_dict()


@router.delete("/v1/corpora/{name}", responses=answers(Deleted))
async def delete_corpus(corpus: Corpus = Depends(resolve.corpus), state: GatewayState = Depends(get_state)):
    name = corpus.name
    users = state.routing.using_corpus(name)
    if users:
        raise Conflict(f"corpus {name!r} is used by domain(s) {', '.join(users)}", param="corpus",
                       code="corpus_in_use")
    with state.sessions() as session, session.begin():
        repo.delete_corpus(session, repo.get_corpus(session, name))
    state.registry.drop(corpus.id)
    await asyncio.to_thread(_remove_corpus_files, state, corpus.id)
    return {"object": "corpus.deleted", "name": name, "deleted": True}


@router.post("/v1/corpora/{name}/documents", status_code=202, responses=answers(JobAccepted, 202))
@request_body(json=JsonDocuments, files="files", max_files=MAX_FILES, file_types=FILE_TYPES)
async def upload_documents(request: Request, corpus: Corpus = Depends(resolve.corpus),
                           principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    dest = state.settings.uploads_dir / str(corpus.id)
    boundary = multipart_boundary(request)
    if boundary is not None:
        items = await items_from_multipart(request, boundary, dest, state.settings)
    else:  # JSON whatever the content type says, as on every JSON route
        items = await items_from_json(request, dest, state.settings)
    await asyncio.to_thread(fsync_dir, dest)
    uploader_filter = principal.filter
    with state.sessions() as session, session.begin():
        # Read again, not merged: the worker may have moved the generation while the body streamed.
        corpus = repo.get_corpus(session, corpus.name)
        if uploader_filter is not None:  # ids known before extraction; the job checks the rest
            repo.check_replaceable(session, corpus, [i.external_id or i.filename for i in items
                                                     if i.kind != "jsonl" and (i.external_id or i.filename)],
                                   uploader_filter.matches)
        job = repo.create_job(session, corpus, items,
                              uploader_filter.as_dict() if uploader_filter is not None else None)
        job_id = job.id
    state.worker.submit(job_id)
    return accepted(job_id)


@router.post("/v1/corpora/{name}/rebuild", status_code=202, responses=answers(JobAccepted, 202))
async def rebuild(name: str = Depends(resolve.corpus_name), body: RebuildRequest = Depends(json_body(RebuildRequest)),
                  state: GatewayState = Depends(get_state)):
    """Re-extract, re-chunk and re-embed every document into a new index generation; searches
    answer from the current one until the switch."""
    with state.sessions() as session, session.begin():
        corpus = repo.get_corpus(session, name)
        job_id = repo.create_rebuild_job(session, corpus, body.chunk_size, body.chunk_overlap,
                                         body.contextual_headers).id
    state.worker.submit(job_id)
    return accepted(job_id)


@router.get("/v1/corpora/{name}/documents", responses=answers(DocumentList))
async def list_documents(corpus: Corpus = Depends(resolve.corpus), state: GatewayState = Depends(get_state),
                         limit: int = Query(100, ge=1, le=1000), after: str | None = None,
                         principal: Principal = Depends(admin_principal)):
    keep = principal.filter.matches if principal.filter is not None else None  # a key sees what it may read
    with state.sessions() as session:
        documents = repo.list_documents(session, corpus, limit + 1, after, keep)  # one more: is there a next page
        return {"object": "list", "data": [repo.document_as_dict(d) for d in documents[:limit]],
                "has_more": len(documents) > limit}


@router.delete("/v1/corpora/{name}/documents/{document_id:path}", responses=answers(Deleted))
async def remove_document(document_id: str, corpus: Corpus = Depends(resolve.corpus),
                          state: GatewayState = Depends(get_state), principal: Principal = Depends(admin_principal)):
    with state.sessions() as session:
        document = repo.get_document(session, corpus, document_id,
                                     principal.filter.matches if principal.filter is not None else None)

    def delete() -> int:  # in a thread: following the generation pointer may read it from disk
        return delete_document(state.sessions, state.registry, state.registry.entry_for(corpus), document.id)

    generation = await asyncio.to_thread(delete)
    return {"object": "document.deleted", "id": document_id, "deleted": True, "generation": generation}


@router.post("/v1/corpora/{name}/search", responses=answers(SearchResult))
async def search(name: Name, principal: Principal = Depends(inference_principal),
                 body: SearchRequest = Depends(json_body(SearchRequest)),
                 state: GatewayState = Depends(get_state)):
    await state.limiter.count_request(principal)  # against requests_per_minute (service/limits.py)
    name = resolve.readable_corpus(state, principal, name)
    requested = filters.parse(body.filter, param="filter")
    hits, _ = await asyncio.to_thread(functools.partial(
        state.retriever.search, [name], body.query, body.k, body.mode, filters=[principal.filter, requested]))
    return {"object": "list", "hits": [hit.as_dict() for hit in hits]}
