"""Domains: bind corpora + an adapter version + a system prompt; swap, roll back, delete, audit; /v1/models."""

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from adapters_store import adapter_repo, tenancy
from adapters_store.errors import Invalid
from adapters_store.tenancy import FULL_NAME_PATTERN
from evaluation.metrics import METRICS
from indexer import filters
from indexer.search import MAX_K, SearchMode
from service.auth import Principal
from service.domains import DEFAULT_RETRIEVAL, DomainRoute
from service.http_body import json_body
from service.responses import Deleted, Domain, DomainHistory, DomainList, DomainSwapped, ModelList, answers
from service.routes import resolve
from service.state import GatewayState, admin_principal, get_state, inference_principal
from service.swap import Binding

router = APIRouter()

# Adapter versions count from 1 in a SQL INTEGER column: 32 bits on PostgreSQL.
MAX_VERSION = 2**31 - 1
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]


class AdapterRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    version: Version


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(default=DEFAULT_RETRIEVAL["k"], ge=0, le=MAX_K)
    mode: SearchMode = DEFAULT_RETRIEVAL["mode"]
    min_score: float | None = Field(default=None, allow_inf_nan=False)
    # Enforced on every retrieval of the domain: {metadata_key: value | [values]} (indexer/filters.py).
    filter: filters.JsonFilter | None = None


def _known_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    return metric


# A metric a gate or a tuning optimises: one of evaluation.metrics.METRICS (the schema lists them).
MetricName = Annotated[str, Field(json_schema_extra={"enum": list(METRICS)}), AfterValidator(_known_metric)]


class Gate(BaseModel):
    """Swap only when the candidate scores `metric` at least `min_delta` above the current binding."""
    model_config = ConfigDict(extra="forbid")
    evalset: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    metric: MetricName
    min_delta: float = Field(default=0.0, ge=-1.0, le=1.0, allow_inf_nan=False)


class DomainPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpora: list[tenancy.NameRef] = Field(default_factory=list, max_length=32)
    adapter: AdapterRef | None = None
    system_prompt: str | None = Field(default=None, max_length=20_000)
    # What the domain knows, for agents choosing a tool (MCP list_domains); never sent to the model.
    description: str | None = Field(default=None, max_length=2_000)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    gate: Gate | None = None


class SwapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    adapter: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    version: Version
    gate: Gate | None = None


def domain_as_dict(route: DomainRoute) -> dict:
    adapter = None
    if route.adapter_path:
        name, _, version = route.engine_model.rpartition("@")
        adapter = {"name": name, "version": int(version)}
    return {"object": "domain", "name": route.name, "corpora": list(route.corpora), "adapter": adapter,
            "engine_model": route.engine_model, "system_prompt": route.system_prompt,
            "description": route.description,
            "retrieval": route.retrieval, "gate": route.gate, "prompt_template": route.prompt_template,
            "demonstrations": list(route.demonstrations), "max_tokens": route.max_tokens,
            "config_version": route.config_version, "created_at": route.created_at}


@router.put("/v1/domains/{name}", responses=answers(Domain, 200, 201))
async def put_domain(response: Response, name: str = Depends(resolve.domain_name),
                     state: GatewayState = Depends(get_state),
                     principal: Principal = Depends(admin_principal),
                     body: DomainPut = Depends(json_body(DomainPut))):
    if name == state.settings.base_model_name:
        raise Invalid(f"invalid domain name {name!r}: it is the base model's", param="domain")
    enforced = filters.parse(body.retrieval.filter, param="retrieval.filter")
    retrieval = {**body.retrieval.model_dump(), "filter": enforced.as_dict() if enforced is not None else None}
    # What the body names lives in the domain's namespace: a tenant's domain binds its own things.
    corpora = [tenancy.within(name, c, param="corpora", kind="corpus") for c in body.corpora]
    adapter = None
    if body.adapter:
        adapter = (tenancy.within(name, body.adapter.name, param="adapter.name", kind="adapter"), body.adapter.version)
    binding = Binding(corpora=corpora, system_prompt=body.system_prompt, adapter=adapter, retrieval=retrieval,
                      gate=_gate(name, body.gate), description=body.description)
    created = await state.swaps.put(name, binding, principal.key_id)
    response.status_code = 201 if created else 200
    return domain_as_dict(state.routing.require(name))


def _gate(domain: str, gate: Gate | None) -> dict | None:
    if gate is None:
        return None
    return {**gate.model_dump(), "evalset": tenancy.within(domain, gate.evalset, param="gate.evalset", kind="evalset")}


@router.delete("/v1/domains/{name}", responses=answers(Deleted))
async def delete_domain(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state)):
    await state.swaps.delete(name)
    return {"object": "domain.deleted", "name": name, "deleted": True}


@router.get("/v1/domains", responses=answers(DomainList))
async def list_domains(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    return {"object": "list", "data": [domain_as_dict(r) for r in state.routing.all() if principal.sees(r.name)]}


@router.get("/v1/domains/{name}", responses=answers(Domain))
async def get_domain(route: DomainRoute = Depends(resolve.domain_route)):
    return domain_as_dict(route)


@router.post("/v1/domains/{name}/adapter", responses=answers(DomainSwapped))
async def swap_adapter(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state),
                       principal: Principal = Depends(admin_principal),
                       body: SwapBody = Depends(json_body(SwapBody))):
    started = time.perf_counter()
    adapter = tenancy.within(name, body.adapter, param="adapter", kind="adapter")
    gate = await state.swaps.swap(name, adapter, body.version, principal, _gate(name, body.gate))
    return {**domain_as_dict(state.routing.get(name)), "swap_seconds": time.perf_counter() - started,
            "gate_result": gate}


@router.post("/v1/domains/{name}/rollback", responses=answers(DomainSwapped))
async def rollback(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state),
                   principal: Principal = Depends(admin_principal)):
    started = time.perf_counter()
    await state.swaps.rollback(name, principal.key_id)
    return {**domain_as_dict(state.routing.get(name)), "swap_seconds": time.perf_counter() - started}


@router.get("/v1/domains/{name}/history", responses=answers(DomainHistory))
async def domain_history(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        domain = adapter_repo.get_domain(session, name)
        return {"object": "list", "data": adapter_repo.history(session, domain)}


@router.get("/v1/models", responses=answers(ModelList))
async def list_models(principal: Principal = Depends(inference_principal), state: GatewayState = Depends(get_state)):
    """What the key may call: its tenant's domains (those in its list, if it has one) and the base
    model (unless it is limited to some domains). A tenant's domains are listed by their full name."""
    base = state.settings.base_model_name
    models = []
    if principal.domains is None:
        models.append({"id": base, "object": "model", "created": 0, "owned_by": "graft", "root": base})
    models += [{"id": r.name, "object": "model", "created": r.created_at, "owned_by": "graft",
                "root": r.engine_model} for r in state.routing.all() if principal.may_call(r.name)]
    return {"object": "list", "data": models}
