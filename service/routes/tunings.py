"""Domain tunings and configuration versions over REST: start a tuning (a `tune` job), list and read
a domain's configuration versions (with their diff against the live configuration), apply one
through a gate (SwapService.apply_config; `history` and `rollback` cover it)."""

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters_store import adapter_repo, config_repo, tenancy
from adapters_store.errors import Invalid
from adapters_store.tenancy import FULL_NAME_PATTERN
from indexer.search import MAX_K, SearchMode
from service.auth import Principal
from service.http_body import json_body
from service.rag.prompt import TEMPLATES
from service.responses import DomainConfigApplied, DomainConfigDetail, DomainConfigList, JobAccepted, answers
from service.routes import resolve
from service.routes.domains import MAX_VERSION, Gate, MetricName, _gate, domain_as_dict
from service.routes.jobs import accepted
from service.state import GatewayState, admin_principal, get_state
from service.tuning import MAX_DEMONSTRATIONS, TuneRequest

router = APIRouter()
DEFAULT_TRIALS = 20
TemplateName = Literal[tuple(TEMPLATES)]  # type: ignore[valid-type]
Choices = Field(default=None, min_length=1, max_length=16)


class TuningSpace(BaseModel):
    """The choices of each parameter a tuning tries (a parameter left out keeps its default choices)."""
    model_config = ConfigDict(extra="forbid")
    k: list[Annotated[int, Field(ge=0, le=MAX_K)]] | None = Choices
    mode: list[SearchMode] | None = Choices
    min_score: list[Annotated[float, Field(allow_inf_nan=False)] | None] | None = Choices
    max_tokens: list[Annotated[int, Field(ge=1, le=4096)]] | None = Choices
    prompt_template: list[TemplateName] | None = Choices
    system_prompt: list[Annotated[str, Field(max_length=20_000)] | None] | None = Choices
    demonstrations: list[Annotated[int, Field(ge=0, le=MAX_DEMONSTRATIONS)]] | None = Choices


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    trials: int = Field(default=DEFAULT_TRIALS, ge=1, le=10_000)


class TuningIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    evalset: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    metric: MetricName
    budget: Budget = Field(default_factory=Budget)
    holdout: str | None = Field(default=None, pattern=FULL_NAME_PATTERN.pattern)
    space: TuningSpace | None = None


class ApplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gate: Gate | None = None


ConfigNumber = Annotated[int, Field(ge=1, le=MAX_VERSION)]


@router.post("/v1/domains/{name}/tunings", status_code=202, responses=answers(JobAccepted, 202))
async def start_tuning(request: Request, name: str = Depends(resolve.domain_name),
                       state: GatewayState = Depends(get_state),
                       principal: Principal = Depends(admin_principal),
                       body: TuningIn = Depends(json_body(TuningIn))):
    """Search the domain's configuration on the set's tuning split; the job's result names the
    configuration version it stored (`config_version`) with its scores."""
    if body.budget.trials > state.settings.tuning_max_trials:
        raise Invalid(f"budget.trials is at most {state.settings.tuning_max_trials} on this gateway",
                      param="budget.trials")
    evalset = tenancy.within(name, body.evalset, param="evalset", kind="evalset")
    holdout = tenancy.within(name, body.holdout, param="holdout", kind="evalset") if body.holdout else None
    space = body.space.model_dump(exclude_none=True) if body.space is not None else None
    job_id = state.tunings.submit(TuneRequest(name, evalset, body.metric, body.budget.trials, holdout=holdout,
                                              space=space or None, requested_by=principal))
    return accepted(job_id)


@router.get("/v1/domains/{name}/configs", responses=answers(DomainConfigList))
async def list_configs(name: str = Depends(resolve.domain_name), state: GatewayState = Depends(get_state)):
    with state.sessions() as session:
        domain = adapter_repo.get_domain(session, name)
        return {"object": "list", "current": config_repo.snapshot(domain), "config_version": domain.config_version,
                "data": [config_repo.version_as_dict(row, domain) for row in config_repo.list_versions(session, domain)]}


@router.get("/v1/domains/{name}/configs/{version}", responses=answers(DomainConfigDetail))
async def get_config(version: ConfigNumber, name: str = Depends(resolve.domain_name),
                     state: GatewayState = Depends(get_state)):
    """The version, its trials, and `diff`: each field where it differs from the live configuration."""
    with state.sessions() as session:
        domain = adapter_repo.get_domain(session, name)
        row = config_repo.get_version(session, domain, version)
        return {**config_repo.version_as_dict(row, domain, with_trials=True),
                "diff": config_repo.diff(config_repo.snapshot(domain), row.config)}


@router.post("/v1/domains/{name}/configs/{version}/apply", responses=answers(DomainConfigApplied))
async def apply_config(version: ConfigNumber, name: str = Depends(resolve.domain_name),
                       state: GatewayState = Depends(get_state), principal: Principal = Depends(admin_principal),
                       body: ApplyIn = Depends(json_body(ApplyIn))):
    """Make the version the live configuration; with a gate (or the domain's default one) only when
    it scores at least `min_delta` above the live one (409 gate_failed otherwise, nothing changed)."""
    started = time.perf_counter()
    gate = await state.swaps.apply_config(name, version, principal, _gate(name, body.gate))
    return {**domain_as_dict(state.routing.get(name)), "swap_seconds": time.perf_counter() - started,
            "gate_result": gate}
