"""Domains: bind corpora + an adapter version + a system prompt; swap, roll back, audit; /v1/models."""

import time
from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from adapters_store import adapter_repo
from adapters_store.corpus_repo import NAME_PATTERN, NotFound
from adapters_store.models import Corpus, Domain, utcnow
from service.auth import Principal
from service.domains import DomainRoute
from service.errors import ApiError
from service.state import GatewayState, admin_principal, get_state, inference_principal
from service.swap import load_version

router = APIRouter()


class AdapterRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN.pattern)
    version: int = Field(ge=1)


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(default=4, ge=0, le=50)
    mode: Literal["dense", "bm25", "hybrid"] = "hybrid"
    min_score: float | None = None


class DomainPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpora: list[str] = Field(default_factory=list, max_length=32)
    adapter: AdapterRef | None = None
    system_prompt: str | None = Field(default=None, max_length=20_000)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)


class SwapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(pattern=NAME_PATTERN.pattern)
    version: int = Field(ge=1)


def domain_as_dict(route: DomainRoute) -> dict:
    adapter = None
    if route.adapter_path:
        name, _, version = route.engine_model.rpartition("@")
        adapter = {"name": name, "version": int(version)}
    return {"object": "domain", "name": route.name, "corpora": list(route.corpora), "adapter": adapter,
            "engine_model": route.engine_model, "system_prompt": route.system_prompt,
            "retrieval": route.retrieval, "created_at": route.created_at}


def _route_or_404(state: GatewayState, name: str) -> DomainRoute:
    route = state.domains.get(name)
    if route is None:
        raise ApiError(404, f"domain {name!r} does not exist", param="domain", code="domain_not_found")
    return route


@router.put("/v1/domains/{name}")
async def put_domain(name: str, body: DomainPut, response: Response,
                     state: GatewayState = Depends(get_state),
                     principal: Principal = Depends(admin_principal)):
    if not NAME_PATTERN.match(name) or name == state.settings.base_model_name:
        raise ApiError(422, f"invalid domain name {name!r}", param="domain", code="invalid_parameter")
    with state.sessions() as session:
        known = set(session.scalars(select(Corpus.name).where(Corpus.name.in_(body.corpora))))
        missing = [c for c in body.corpora if c not in known]
        if missing:
            raise ApiError(422, f"corpus {missing[0]!r} does not exist", param="corpora",
                           code="corpus_not_found")
        try:
            target_id = (adapter_repo.get_version(session, body.adapter.name, body.adapter.version).id
                         if body.adapter else None)
        except NotFound as exc:
            raise ApiError(422, str(exc), param="adapter", code="adapter_not_found") from exc
        target = load_version(session, target_id)
    swaps = state.swaps
    async with swaps.lock(name):
        await swaps.prepare(target)
        with state.sessions() as session, session.begin():
            try:
                domain = adapter_repo.get_domain(session, name)
                created = False
            except NotFound:
                domain, created = Domain(name=name), True
                session.add(domain)
            previous = domain.adapter_version_id
            domain.corpora = list(body.corpora)
            domain.system_prompt = body.system_prompt
            domain.retrieval = body.retrieval.model_dump()
            domain.adapter_version = load_version(session, target_id)
            domain.updated_at = utcnow()
            session.flush()
            adapter_repo.record(session, domain, "create" if created else "update", previous, target_id,
                                principal.key_id)
        swaps.flip(domain)
    response.status_code = 201 if created else 200
    return domain_as_dict(state.domains.get(name))


@router.get("/v1/domains", dependencies=[Depends(admin_principal)])
async def list_domains(state: GatewayState = Depends(get_state)):
    return {"object": "list", "data": [domain_as_dict(r) for r in state.domains.all()]}


@router.get("/v1/domains/{name}", dependencies=[Depends(admin_principal)])
async def get_domain(name: str, state: GatewayState = Depends(get_state)):
    return domain_as_dict(_route_or_404(state, name))


@router.post("/v1/domains/{name}/adapter")
async def swap_adapter(name: str, body: SwapBody, state: GatewayState = Depends(get_state),
                       principal: Principal = Depends(admin_principal)):
    _route_or_404(state, name)
    started = time.perf_counter()
    await state.swaps.swap(name, body.adapter, body.version, "swap", principal.key_id)
    return {**domain_as_dict(state.domains.get(name)), "swap_seconds": time.perf_counter() - started}


@router.post("/v1/domains/{name}/rollback")
async def rollback(name: str, state: GatewayState = Depends(get_state),
                   principal: Principal = Depends(admin_principal)):
    _route_or_404(state, name)
    started = time.perf_counter()
    await state.swaps.swap(name, None, None, "rollback", principal.key_id)
    return {**domain_as_dict(state.domains.get(name)), "swap_seconds": time.perf_counter() - started}


@router.get("/v1/domains/{name}/history", dependencies=[Depends(admin_principal)])
async def domain_history(name: str, state: GatewayState = Depends(get_state)):
    _route_or_404(state, name)
    with state.sessions() as session:
        domain = adapter_repo.get_domain(session, name)
        return {"object": "list", "data": adapter_repo.history(session, domain)}


@router.get("/v1/models", dependencies=[Depends(inference_principal)])
async def list_models(state: GatewayState = Depends(get_state)):
    base = state.settings.base_model_name
    models = [{"id": base, "object": "model", "created": 0, "owned_by": "graft", "root": base}]
    models += [{"id": r.name, "object": "model", "created": r.created_at, "owned_by": "graft",
                "root": r.engine_model} for r in state.domains.all()]
    return {"object": "list", "data": models}
