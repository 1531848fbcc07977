"""Evaluation sets and runs over REST: create, list, show, delete sets; start and read runs."""

import contextlib
import dataclasses
import shutil
import uuid
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adapters_store import eval_repo, strict_json, tenancy
from adapters_store.errors import Invalid
from adapters_store.models import Eval as EvalRun
from adapters_store.tenancy import FULL_NAME_PATTERN
from evaluation.metrics import ABSTENTION_PHRASE
from indexer.search import MAX_K, SearchMode
from service.auth import Principal
from service.errors import invalid_from
from service.evals import EvalRequest
from service.http_body import json_body, read_json_object, request_body
from service.responses import Deleted, Eval, EvalItems, EvalList, EvalSet, EvalSetList, JobAccepted, answers
from service.routes import resolve
from service.routes.domains import AdapterRef
from service.routes.jobs import accepted
from service.state import GatewayState, admin_principal, get_state
from service.uploads import multipart_boundary, receive_files

router = APIRouter()


class EvalItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(default=None, min_length=1, max_length=256)
    question: str = Field(min_length=1, max_length=8192)
    answers: list[str] = Field(default_factory=list, max_length=64)
    document_ids: list[str] = Field(default_factory=list, max_length=256)
    unanswerable: bool = Field(default=False, description=(
        f"the passages cannot answer it: scored by `abstention` (1 when the output contains "
        f"{ABSTENTION_PHRASE!r}), not by the answer metrics; such an item has no `answers`"))

    @model_validator(mode="after")
    def _unanswerable_has_no_answers(self):
        if self.unanswerable and self.answers:
            raise ValueError("an unanswerable item has no answers")
        return self


class EvalSetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    items: list[EvalItemIn] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_unique(self):
        ids = [item.id or str(i + 1) for i, item in enumerate(self.items)]
        if len(set(ids)) != len(ids):
            raise ValueError("item ids must be unique within a set")
        return self


class RetrievalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int | None = Field(default=None, ge=0, le=MAX_K)
    mode: SearchMode | None = None


class EvalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    evalset: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    adapter: AdapterRef | None = None
    retrieval: RetrievalIn | Literal[False] | None = None
    max_tokens: int = Field(default=64, ge=1, le=4096)


def _stored_items(body: EvalSetIn) -> list[dict]:
    """Items as stored: every one with an id (given, or its position from 1); `unanswerable` only
    when true, so a set without such items keeps the content hash it always had."""
    return [{"id": item.id or str(i + 1), "question": item.question, "answers": item.answers,
             "document_ids": item.document_ids, **({"unanswerable": True} if item.unanswerable else {})}
            for i, item in enumerate(body.items)]


@router.post("/v1/evalsets", status_code=201, responses=answers(EvalSet, 201))
@request_body(json=EvalSetIn, files="files", max_files=1,
              description="the set as JSON, or one JSONL file of items (its name from `name` or the file's)")
async def create_evalset(request: Request, principal: Principal = Depends(admin_principal),
                         state: GatewayState = Depends(get_state), name: str | None = Query(None, description="the set's name, for a JSONL upload")):
    boundary = multipart_boundary(request)
    raw = await (_jsonl_upload(request, boundary, state, name) if boundary is not None
                 else read_json_object(request, state.settings.max_request_bytes))
    items = raw.get("items")  # counted before validation (cheap); a non-list is the model's 400
    if isinstance(items, list) and len(items) > state.settings.eval_max_items:
        raise Invalid(f"an evaluation set holds at most {state.settings.eval_max_items} items", param="items")
    try:
        body = EvalSetIn.model_validate(raw)
    except ValidationError as exc:
        raise invalid_from(exc) from exc
    with state.sessions() as session, session.begin():
        stored = principal.full_name(body.name, kind="evalset")
        return eval_repo.evalset_as_dict(eval_repo.create_evalset(session, stored, _stored_items(body)))


async def _jsonl_upload(request: Request, boundary: bytes, state: GatewayState, name: str | None) -> dict:
    staging = state.settings.data_dir / "tmp" / uuid.uuid4().hex
    try:
        files = await receive_files(request, boundary, staging, field_name="files",
                                    max_bytes=state.settings.max_upload_bytes, max_files=1)
        if not files:
            raise Invalid("send one JSONL file in the multipart field `files`", param="files", code="no_files")
        items = []
        for number, line in enumerate(files[0].path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(strict_json.loads(line))
            except ValueError as exc:
                raise Invalid(f"line {number} is not valid JSON: {exc}", param="files", code="invalid_json") from exc
        stem = files[0].filename.rsplit("/", 1)[-1].split(".", 1)[0]
        return {"name": name or stem, "items": items}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@router.get("/v1/evalsets", responses=answers(EvalSetList))
async def list_evalsets(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return {"object": "list", "data": [eval_repo.evalset_as_dict(e) for e in eval_repo.list_evalsets(session)
                                           if principal.sees(e.name)]}


@router.get("/v1/evalsets/{name}", responses=answers(EvalSet))
async def get_evalset(name: str = Depends(resolve.evalset_name), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return eval_repo.evalset_as_dict(eval_repo.get_evalset(session, name), with_items=True)


@router.delete("/v1/evalsets/{name}", responses=answers(Deleted))
async def delete_evalset(name: str = Depends(resolve.evalset_name), state: GatewayState = Depends(get_state)):
    """Runs keep the set's name and hash, so deleting a set loses none of them."""
    with state.sessions() as session, session.begin():
        session.delete(eval_repo.get_evalset(session, name))
    return {"object": "evalset.deleted", "name": name, "deleted": True}


@router.post("/v1/evals", status_code=202, responses=answers(JobAccepted, 202))
async def start_eval(request: Request, principal: Principal = Depends(admin_principal),
                     body: EvalIn = Depends(json_body(EvalIn)), state: GatewayState = Depends(get_state)):
    retrieval = body.retrieval.model_dump(exclude_none=True) if isinstance(body.retrieval, RetrievalIn) \
        else body.retrieval
    # The set and the candidate live in the domain's namespace.
    domain = principal.full_name(body.domain, param="domain", kind="domain")
    evalset = tenancy.within(domain, body.evalset, param="evalset", kind="evalset")
    adapter = None
    if body.adapter:
        adapter = {"name": tenancy.within(domain, body.adapter.name, param="adapter.name", kind="adapter"),
                   "version": body.adapter.version}
    run = EvalRequest(domain, evalset, retrieval=retrieval, max_tokens=body.max_tokens, adapter=adapter,
                      requested_by=principal)
    state.evals.check(run)  # a key that may not evaluate, an unknown domain or set: before any load
    request.state.owner_tenant = tenancy.tenant_of(domain)  # the audit event's tenant
    candidate = (adapter["name"], adapter["version"]) if adapter else None  # None: the current binding
    async with contextlib.AsyncExitStack() as holding:  # kept loaded from now to the run's end
        engine_model = await holding.enter_async_context(state.swaps.kept_loaded(domain, candidate))
        job_id, eval_id = state.evals.submit(dataclasses.replace(run, engine_model=engine_model), holding)
    return accepted(job_id, eval_id=eval_id)


@router.get("/v1/evals", responses=answers(EvalList))
async def list_evals(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state),
                     domain: tenancy.NameRef | None = None, limit: int = Query(100, ge=1, le=1000)):
    if domain is not None:
        domain = principal.full_name(domain, param="domain", kind="domain")
    with state.sessions() as session:
        runs = eval_repo.list_evals(session, domain, limit, tenant=principal.tenant)
        return {"object": "list", "data": [eval_repo.eval_as_dict(r) for r in runs]}


@router.get("/v1/evals/{eval_id}", responses=answers(Eval))
async def get_eval(run: EvalRun = Depends(resolve.eval_run)):
    return eval_repo.eval_as_dict(run)


@router.get("/v1/evals/{eval_id}/items", responses=answers(EvalItems),
            dependencies=[Depends(resolve.reads_whole_corpora("an evaluation's items"))])
async def get_eval_items(run: EvalRun = Depends(resolve.eval_run), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return {"object": "list", "items": [eval_repo.eval_item_as_dict(i) for i in eval_repo.eval_items(session, run)]}
