"""Tenants and API keys: create, list, revoke. The `graft keys|tenants` CLI and the REST routes
(service/routes/keys.py) both go through here, so they validate alike.

A key is global (tenant None) or belongs to one tenant. A tenant's admin key manages that tenant's
keys only; a global admin key manages tenants and every key.
"""

import secrets

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters_store import tenancy
from adapters_store.errors import Conflict, Invalid, NotFound
from adapters_store.models import ApiKey, Tenant
from indexer import filters
from service.auth import SCOPES, hash_key
from service.limits import Limits


def new_key() -> str:
    return "graft-" + secrets.token_urlsafe(32)


def checked_limits(limits: dict | None, param: str = "limits") -> dict | None:
    if limits is None:
        return None
    try:
        return Limits.model_validate(limits).model_dump(exclude_none=True) or None
    except ValidationError as exc:
        raise Invalid(f"{param}: {exc.errors()[0]['msg']}", param=param) from exc


def create_tenant(session: Session, name: str, limits: dict | None = None) -> Tenant:
    row = Tenant(name=tenancy.check_tenant_name(name), limits=checked_limits(limits))
    session.add(row)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"tenant {name!r} already exists", param="name", code="tenant_exists") from exc
    return row


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


def get_tenant(session: Session, name: str) -> Tenant:
    row = session.scalar(select(Tenant).where(Tenant.name == name))
    if row is None:
        raise NotFound(f"tenant {name!r} does not exist", param="tenant", code="tenant_not_found")
    return row


def tenant_as_dict(row: Tenant) -> dict:
    return {"object": "tenant", "name": row.name, "limits": row.limits, "created_at": int(row.created_at.timestamp())}


def create_key(session: Session, name: str, scope: str, metadata_filter: dict | None = None, *,
               tenant: str | None = None, domains: list[str] | None = None, limits: dict | None = None
               ) -> tuple[ApiKey, str]:
    """A new key and its secret (shown once, stored as a hash). `metadata_filter` limits the documents
    it may read, `domains` (short names of its tenant's domains) the domains an inference key may call."""
    if scope not in SCOPES:
        raise Invalid(f"scope must be one of {', '.join(SCOPES)}", param="scope")
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise Invalid("a key's name is 1 to 128 characters", param="name")
    if tenant is not None:
        get_tenant(session, tenant)
    if domains is not None:
        if scope != "inference":
            raise Invalid("only an inference key is limited to domains", param="domains")
        if not isinstance(domains, list) or not domains:
            raise Invalid("domains is a non-empty list of domain names", param="domains")
        domains = sorted({tenancy.full_name(tenant, d, param="domains", kind="domain") for d in domains})
        domains = [tenancy.split(d)[1] if tenant is not None else d for d in domains]
    parsed = filters.parse(metadata_filter)
    key = new_key()
    row = ApiKey(name=name, prefix=key[:12], key_hash=hash_key(key), scope=scope,
                 metadata_filter=parsed.as_dict() if parsed is not None else None,
                 tenant=tenant, domains=domains, limits=checked_limits(limits))
    session.add(row)
    session.flush()
    return row, key


def list_keys(session: Session, tenant: str | None = None) -> list[ApiKey]:
    """One tenant's keys, or every key (a global admin's view) when `tenant` is None."""
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: int, tenant: str | None = None) -> ApiKey:
    """Revoke a key; a tenant's admin (`tenant` set) reaches only its own tenant's keys."""
    row = session.get(ApiKey, key_id)
    if row is None or (tenant is not None and row.tenant != tenant):
        raise NotFound(f"key {key_id} does not exist", param="key_id", code="key_not_found")
    row.revoked = True
    return row


def key_as_dict(row: ApiKey) -> dict:
    return {"object": "api_key", "id": row.id, "name": row.name, "prefix": row.prefix, "scope": row.scope,
            "tenant": row.tenant, "domains": row.domains, "filter": row.metadata_filter, "limits": row.limits,
            "revoked": row.revoked, "created_at": int(row.created_at.timestamp())}
