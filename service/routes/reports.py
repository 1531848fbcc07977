"""Domain reports over REST: start one (a `report` job whose result is the table) and list a domain's."""

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from adapters_store import tenancy
from adapters_store.tenancy import FULL_NAME_PATTERN
from service.auth import Principal
from service.http_body import json_body
from service.reports import ReportRequest
from service.responses import DomainReportList, JobAccepted, answers
from service.domains import DomainRoute
from service.routes import resolve
from service.routes.domains import AdapterRef, Version
from service.routes.jobs import accepted
from service.state import GatewayState, admin_principal, get_state

router = APIRouter()


class ConfigRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Version


class ReportRoutes(BaseModel):
    """What feeds the rows that need more than the base model: a version, `false` to leave the row
    out, or nothing for the newest one the domain's records point at (service/report_plan.py)."""
    model_config = ConfigDict(extra="forbid")
    tuned: ConfigRef | Literal[False] | None = None
    reader: AdapterRef | Literal[False] | None = None
    memorize: AdapterRef | Literal[False] | None = None
    composed: AdapterRef | Literal[False] | None = None


class ReportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evalset: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    routes: ReportRoutes = Field(default_factory=ReportRoutes)
    max_tokens: int = Field(default=64, ge=1, le=4096)


@router.post("/v1/domains/{name}/reports", status_code=202, responses=answers(JobAccepted, 202))
async def start_report(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state),
                       principal: Principal = Depends(admin_principal),
                       body: ReportIn = Depends(json_body(ReportIn))):
    """One evaluation run per route on the set's items; the job's result is the table, each row with
    its metrics and the paired bootstrap interval of its difference against the retrieval row."""
    evalset = tenancy.within(name, body.evalset, param="evalset", kind="evalset")
    routes = {key: value if value is False else value.model_dump()
              for key, value in body.routes if value is not None}
    return accepted(state.reports.submit(ReportRequest(name, evalset, routes, body.max_tokens,
                                                       requested_by=principal)))


@router.get("/v1/domains/{name}/reports", responses=answers(DomainReportList))
async def list_reports(route: DomainRoute = Depends(resolve.domain_route), state: GatewayState = Depends(get_state),
                       limit: int = Query(20, ge=1, le=200)):
    """The domain's reports, newest first, with their tables."""
    return {"object": "list", "data": state.reports.of_domain(route.name, limit)}
