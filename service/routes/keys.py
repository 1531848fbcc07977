"""Tenants and API keys over REST (DESIGN.md "Tenancy and keys"); the CLI does the same through
service/keys.py. A key made here works at once.

A global admin key (no tenant) creates tenants and manages every key; a tenant's admin key manages
its own tenant's keys, and a key it makes never reads more documents than its own filter allows nor
has higher limits than its own (service/limits.py `narrow`).
"""

import asyncio

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters_store import tenancy
from adapters_store.errors import Forbidden
from indexer import filters
from service import keys
from service.auth import Principal
from service.http_body import json_body
from service.limits import Limits, narrow
from service.responses import ApiKeyCreated, ApiKeyList, Deleted, Tenant, TenantList, answers
from service.state import GatewayState, admin_principal, get_state

router = APIRouter()
MAX_ID = 2**62  # ids SQL can hold


class TenantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    limits: Limits | None = None


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    scope: str = Field(pattern="^(inference|admin)$")
    tenant: str | None = Field(default=None, min_length=1, max_length=63)
    domains: list[str] | None = Field(default=None, min_length=1, max_length=256)
    filter: filters.JsonFilter | None = None
    limits: Limits | None = None


async def global_admin(principal: Principal = Depends(admin_principal)) -> Principal:
    if principal.tenant is not None:
        raise Forbidden("only a global admin key manages tenants", code="global_admin_required")
    return principal


def _limits(limits: Limits | None) -> dict | None:
    return limits.model_dump(exclude_none=True) if limits is not None else None


@router.post("/v1/tenants", status_code=201, responses=answers(Tenant, 201))
async def create_tenant(_: Principal = Depends(global_admin), body: TenantIn = Depends(json_body(TenantIn)),
                        state: GatewayState = Depends(get_state)):
    def create():
        with state.sessions() as session, session.begin():
            return keys.tenant_as_dict(keys.create_tenant(session, body.name, _limits(body.limits)))
    return await asyncio.to_thread(create)


class TenantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limits: Limits | None  # null: no limits of the tenant's own


@router.patch("/v1/tenants/{name}", responses=answers(Tenant))
async def update_tenant(name: str = Path(pattern=tenancy.TENANT_PATTERN.pattern), _: Principal = Depends(global_admin),
                        body: TenantPatch = Depends(json_body(TenantPatch)), state: GatewayState = Depends(get_state)):
    """Change a tenant's limits; the gateways apply them within the limiter's cache time (5 s)."""
    def update():
        with state.sessions() as session, session.begin():
            row = keys.get_tenant(session, name)
            row.limits = _limits(body.limits) or None
            return keys.tenant_as_dict(row)
    return await asyncio.to_thread(update)


@router.get("/v1/tenants", responses=answers(TenantList))
async def list_tenants(_: Principal = Depends(global_admin), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        return {"object": "list", "data": [keys.tenant_as_dict(t) for t in keys.list_tenants(session)]}


@router.post("/v1/keys", status_code=201, responses=answers(ApiKeyCreated, 201))
async def create_key(principal: Principal = Depends(admin_principal), body: KeyIn = Depends(json_body(KeyIn)),
                     state: GatewayState = Depends(get_state)):
    tenant = body.tenant
    if principal.tenant is not None:
        if tenant not in (None, principal.tenant):
            raise Forbidden("a tenant's admin key makes keys of its own tenant only", param="tenant",
                            code="insufficient_scope")
        tenant = principal.tenant
    requested = filters.parse(body.filter)
    narrowed = filters.intersect(principal.filter, requested)

    def create():
        with state.sessions() as session, session.begin():
            row, secret = keys.create_key(session, body.name, body.scope,
                                          narrowed.as_dict() if narrowed is not None else None,
                                          tenant=tenant, domains=body.domains,
                                          limits=narrow(principal.limits, _limits(body.limits)))
            return {**keys.key_as_dict(row), "key": secret}
    return await asyncio.to_thread(create)


@router.get("/v1/keys", responses=answers(ApiKeyList))
async def list_keys(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        rows = keys.list_keys(session, principal.tenant)
        return {"object": "list", "data": [keys.key_as_dict(r) for r in rows]}


@router.delete("/v1/keys/{key_id}", responses=answers(Deleted))
async def revoke_key(request: Request, key_id: int = Path(ge=1, le=MAX_ID),
                     principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state)):
    def revoke() -> str | None:
        with state.sessions() as session, session.begin():
            return keys.revoke_key(session, key_id, principal.tenant).tenant
    request.state.owner_tenant = await asyncio.to_thread(revoke)  # the audit event's tenant
    return {"object": "api_key.deleted", "id": key_id, "deleted": True}
