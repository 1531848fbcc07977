"""The audit log over REST (service/audit.py records it): newest first, paged by id.

A global admin key sees every event; a tenant's admin key sees its tenant's events only.
"""

import asyncio

from fastapi import APIRouter, Depends, Query

from service import audit
from service.auth import Principal
from service.responses import AuditEventList, answers
from service.state import GatewayState, admin_principal, get_state

router = APIRouter()
MAX_ID = 2**62  # ids SQL can hold


@router.get("/v1/audit", responses=answers(AuditEventList))
async def list_audit_events(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state),
                            limit: int = Query(100, ge=1, le=1000),
                            before: int | None = Query(None, ge=1, le=MAX_ID,
                                                       description="only events older than this id (paging)"),
                            action: str | None = Query(None, min_length=1, max_length=audit.MAX_ACTION,
                                                       description="only this action, e.g. `domain.swap`")):
    """Every admin change: who (`api_key_id`, None for a bootstrap key, open mode or the CLI), whose
    (`tenant`), when (`at`, unix seconds), what (`action`, `target`, `details`)."""
    def read() -> list[dict]:
        with state.sessions() as session:
            rows = audit.list_events(session, tenant=principal.tenant, every_tenant=principal.tenant is None,
                                     limit=limit + 1, before=before, action=action)
            return [audit.event_as_dict(row) for row in rows]

    events = await asyncio.to_thread(read)
    return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}
