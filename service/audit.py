"""The audit log: every admin change, with the key that made it, its tenant and the time.

Over REST, `AuditLog` (plain ASGI middleware, installed by the app factory) records a request when

- its method writes (POST, PUT, PATCH, DELETE),
- its route checked for an admin key (`admin_principal` in service/state.py marks the request
  `audited`; the key itself is the `principal` service/auth.py leaves on the request), and
- it answers 2xx.

The action and the target come from `AUDITED`, the one table of admin write routes (a test checks
that every such route of the app is in it). The row is committed BEFORE the response's first
message goes to the client, so a 2xx a client sees means its event is recorded; should the write
fail, the client gets a 500 instead of the 2xx (the change itself stays made). A crash between the
change's own commit and the audit write loses that one event.

The `graft keys` and `graft tenants` commands record their changes with `record` in the same
transaction as the change, with no key id (the CLI runs with the database's own rights).
"""

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters_store import tenancy
from adapters_store.models import AuditEvent
from service.errors import INTERNAL_ERROR, error_response

log = logging.getLogger(__name__)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TARGET = 256  # the column's width
MAX_ACTION = 64


@dataclass(frozen=True)
class Audited:
    """What an admin write route records.

    `target` is a template: each `{field}` is the path parameter of that name or, where the path
    has none (a create whose name is in the body), that field of the JSON response. A `{name}` is
    a corpus, adapter, domain or evaluation set, stored in full (`tenant:name`) for a tenant's key,
    unless `full_name` is False. `details` names response fields kept with the event (never a
    secret). `created`, if set, is the action when the route answers 201 (PUT creates or updates).
    """
    action: str
    target: str
    details: tuple[str, ...] = ()
    created: str | None = None
    full_name: bool = True
    # Whose thing changed (the event's `tenant`, so that tenant's admin sees a global key's changes
    # to it): "name", the tenant of the `{name}` target's full name; "tenant", the tenant the route
    # names (`{name}` of a tenant route, or the response's `tenant`); "route", what the route found
    # (a thing named by id: it sets `request.state.owner_tenant`).
    owner: str = "name"


# (method, route template as in `route.path_format`) → what it records.
AUDITED: dict[tuple[str, str], Audited] = {
    ("POST", "/v1/corpora"): Audited("corpus.create", "{name}"),
    ("DELETE", "/v1/corpora/{name}"): Audited("corpus.delete", "{name}"),
    ("POST", "/v1/corpora/{name}/rebuild"): Audited("corpus.rebuild", "{name}", ("job_id",)),
    ("POST", "/v1/corpora/{name}/documents"): Audited("document.upload", "{name}", ("job_id",)),
    ("DELETE", "/v1/corpora/{name}/documents/{document_id}"):
        Audited("document.delete", "{name}/{document_id}", ("generation",)),
    ("POST", "/v1/adapters/{name}/versions"): Audited("adapter.upload", "{name}@{version}", ("sha256", "rank")),
    ("DELETE", "/v1/adapters/{name}/versions/{version}"): Audited("adapter.delete", "{name}@{version}"),
    ("POST", "/v1/adapters/{name}/trainings"): Audited("training.start", "{name}", ("job_id",)),
    ("PUT", "/v1/domains/{name}"): Audited("domain.update", "{name}", ("corpora", "adapter"), created="domain.create"),
    ("DELETE", "/v1/domains/{name}"): Audited("domain.delete", "{name}"),
    ("POST", "/v1/domains/{name}/adapter"): Audited("domain.swap", "{name}", ("adapter",)),
    ("POST", "/v1/domains/{name}/rollback"): Audited("domain.rollback", "{name}", ("adapter", "config_version")),
    ("POST", "/v1/domains/{name}/tunings"): Audited("domain.tune", "{name}", ("job_id",)),
    ("POST", "/v1/domains/{name}/reports"): Audited("domain.report", "{name}", ("job_id",)),
    ("POST", "/v1/domains/{name}/configs/{version}/apply"):
        Audited("domain.config_apply", "{name}#{version}", ("config_version", "gate_result")),
    ("POST", "/v1/evalsets"): Audited("evalset.create", "{name}", ("sha256", "items")),
    ("DELETE", "/v1/evalsets/{name}"): Audited("evalset.delete", "{name}"),
    ("POST", "/v1/evals"): Audited("eval.start", "{eval_id}", ("job_id",), owner="route"),
    ("POST", "/v1/jobs/{job_id}/cancel"): Audited("job.cancel", "{job_id}", owner="route"),
    ("POST", "/v1/tenants"): Audited("tenant.create", "{name}", full_name=False, owner="tenant"),
    ("PATCH", "/v1/tenants/{name}"): Audited("tenant.update", "{name}", ("limits",), full_name=False, owner="tenant"),
    ("POST", "/v1/keys"): Audited("key.create", "{id}", ("name", "scope", "tenant"), owner="tenant"),
    ("DELETE", "/v1/keys/{key_id}"): Audited("key.revoke", "{key_id}", owner="route"),
}

_FIELD = re.compile(r"{(\w+)}")


def record(session: Session, action: str, target: str, *, api_key_id: int | None = None,
           tenant: str | None = None, details: dict | None = None) -> AuditEvent:
    """Add one event to the session: it commits with the change it describes."""
    row = AuditEvent(action=action[:MAX_ACTION], target=target[:MAX_TARGET], api_key_id=api_key_id,
                     tenant=tenant, details=details or None)
    session.add(row)
    return row


def list_events(session: Session, *, tenant: str | None, every_tenant: bool, limit: int,
                before: int | None = None, action: str | None = None) -> list[AuditEvent]:
    """Newest first: every tenant's events (a global admin), or one tenant's."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if not every_tenant:
        query = query.where(AuditEvent.tenant == tenant)
    if before is not None:
        query = query.where(AuditEvent.id < before)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return list(session.scalars(query))


def event_as_dict(row: AuditEvent) -> dict:
    at = row.at if row.at.tzinfo is not None else row.at.replace(tzinfo=timezone.utc)  # SQLite drops it
    return {"id": row.id, "at": int(at.timestamp()), "api_key_id": row.api_key_id, "tenant": row.tenant,
            "action": row.action, "target": row.target, "details": row.details}


def describe(method: str, template: str, status: int, path_params: dict, answer: dict,
             principal, route_owner: str | None = None,
             stored_name: str | None = None) -> tuple[str, str, dict | None, str | None]:
    """(action, target, details, tenant) of a 2xx admin write, from the table (a route missing from
    it, which a test forbids, is still recorded, under its method and template). `route_owner`: the
    tenant of the thing a route found by id (`request.state.owner_tenant`); `stored_name`: the full
    name of the path's `{name}` as the route resolved it (`request.state.stored_name`,
    service/routes/resolve.py)."""
    audited = AUDITED.get((method, template))
    if audited is None:
        audited = Audited(f"{method} {template}", "/".join("{%s}" % f for f in _FIELD.findall(template)))

    def fill(match: re.Match) -> str:
        field = match.group(1)
        value = path_params.get(field, answer.get(field))
        if value is None:
            return "?"
        if field == "name" and audited.full_name and stored_name is not None:
            return stored_name
        return str(value)

    action = audited.created if audited.created and status == 201 else audited.action
    details = {field: answer[field] for field in audited.details if field in answer}
    target = _FIELD.sub(fill, audited.target)
    return action, target, details or None, _owner(audited, principal, path_params, answer, route_owner)


def _owner(audited: Audited, principal, path_params: dict, answer: dict, route_owner: str | None) -> str | None:
    """The tenant whose thing the event changed: a tenant's key changes its own tenant's things only."""
    if principal.tenant is not None:
        return principal.tenant
    if audited.owner == "route":
        return route_owner
    if audited.owner == "tenant":  # a key's answer names its tenant; a tenant route names the tenant
        return answer["tenant"] if "tenant" in answer else path_params.get("name", answer.get("name"))
    name = path_params.get("name", answer.get("name"))  # a global key names a tenant's thing in full
    return tenancy.tenant_of(str(name)) if name is not None else None


def _write(sessions, action: str, target: str, details: dict | None, principal, tenant: str | None) -> None:
    with sessions() as session, session.begin():
        record(session, action, target, api_key_id=principal.key_id, tenant=tenant, details=details)


class AuditLog:
    """ASGI middleware: holds the answer of an audited 2xx admin write until its event is committed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            return await self.app(scope, receive, send)
        held: dict | None = None
        chunks: list[bytes] = []

        async def send_after_recording(message):
            nonlocal held
            if message["type"] == "http.response.start":
                state = scope.get("state") or {}
                if 200 <= message["status"] < 300 and state.get("audited") and state.get("principal"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = b"".join(chunks)
                if not await self._record(scope, held["status"], body):
                    response = error_response(INTERNAL_ERROR[0], "the change was made, but its audit event "
                                              "could not be recorded", error_type=INTERNAL_ERROR[1])
                    held = None
                    return await response(scope, receive, send)
                start, held = held, None
                await send(start)
                return await send({"type": "http.response.body", "body": body, "more_body": False})
            await send(message)

        await self.app(scope, receive, send_after_recording)

    @staticmethod
    async def _record(scope, status: int, body: bytes) -> bool:
        route = scope.get("route")
        template = getattr(route, "path_format", None) or scope.get("path", "")
        try:
            answer = json.loads(body) if body else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        principal = scope["state"]["principal"]
        action, target, details, tenant = describe(scope["method"], template, status,
                                                   scope.get("path_params") or {}, answer, principal,
                                                   scope["state"].get("owner_tenant"),
                                                   scope["state"].get("stored_name"))
        try:
            await asyncio.to_thread(_write, scope["app"].state.graft.sessions, action, target, details, principal,
                                    tenant)
        except Exception:
            log.exception("could not record the audit event %s %s", action, target)
            return False
        return True
