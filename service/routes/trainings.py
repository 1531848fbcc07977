"""Training jobs over REST (a corpus compiled into an adapter version) and job cancellation."""

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters_store import corpus_repo, eval_repo, tenancy
from adapters_store.errors import Invalid
from adapters_store.tenancy import FULL_NAME_PATTERN
from service.auth import Principal
from service.http_body import json_body
from service.responses import JobAccepted, answers
from service.routes import resolve
from service.routes.domains import Gate
from service.routes.jobs import accepted
from service.state import GatewayState, admin_principal, get_state
from service.teacher import Teacher, check_url
from service.training import TrainingRequest
from service.training_data import RECIPE_DEFAULTS, RECIPES

router = APIRouter()


class Promotion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domain: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    gate: Gate | None = None


class TeacherIn(BaseModel):
    """An OpenAI-compatible endpoint that writes the training questions instead of the base model."""
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000)  # base URL: requests go to {url}/chat/completions
    model: str = Field(min_length=1, max_length=200)
    key: str | None = Field(default=None, min_length=1, max_length=4000, repr=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return check_url(url)


class TrainingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpus: str = Field(pattern=FULL_NAME_PATTERN.pattern)
    recipe: Literal[RECIPES]
    base: str | None = None
    rank: int = Field(default=8, ge=1, le=256)
    epochs: int | None = Field(default=None, ge=1, le=100)  # None: the recipe's default
    max_examples: int = Field(default=200, ge=1)
    learning_rate: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    evalset: str | None = Field(default=None, pattern=FULL_NAME_PATTERN.pattern)
    promote: Promotion | None = None
    teacher: TeacherIn | None = None  # default: the base model on the gateway's engines


@router.post("/v1/adapters/{name}/trainings", status_code=202, responses=answers(JobAccepted, 202),
             dependencies=[Depends(resolve.reads_whole_corpora("a training"))])
async def start_training(state: GatewayState = Depends(get_state), principal: Principal = Depends(admin_principal),
                         body: TrainingIn = Depends(json_body(TrainingIn)),
                         name: str = Depends(resolve.adapter_name)):
    settings = state.settings
    if body.base not in (None, settings.base_model_name):
        raise Invalid(f"this gateway trains adapters for its base model {settings.base_model_name!r} only",
                      param="base")
    if body.rank > settings.max_lora_rank:
        raise Invalid(f"rank {body.rank} is above the engines' --max-lora-rank {settings.max_lora_rank}",
                      param="rank")
    if body.max_examples > settings.training_max_examples:
        raise Invalid(f"max_examples is at most {settings.training_max_examples}", param="max_examples")
    if body.evalset and not body.promote:
        raise Invalid("an evaluation runs through a domain: give `promote.domain` with `evalset`",
                      param="evalset")
    # What the body names lives in the adapter's namespace (a tenant trains on its own corpora).
    corpus = tenancy.within(name, body.corpus, param="corpus", kind="corpus")
    evalset = tenancy.within(name, body.evalset, param="evalset", kind="evalset") if body.evalset else None
    promote = body.promote.model_dump() if body.promote else None
    if promote is not None:
        promote["domain"] = tenancy.within(name, promote["domain"], param="promote.domain", kind="domain")
        if promote.get("gate"):
            promote["gate"]["evalset"] = tenancy.within(name, promote["gate"]["evalset"], param="promote.gate.evalset",
                                                        kind="evalset")
    with state.sessions() as session:
        corpus_repo.get_corpus(session, corpus)
        if evalset:
            eval_repo.get_evalset(session, evalset)
        if promote is not None and promote.get("gate"):
            eval_repo.get_evalset(session, promote["gate"]["evalset"])
    if promote is not None:
        state.routing.require(promote["domain"], param="promote.domain", named=body.promote.domain)
    # The teacher's key is used, never recorded: not in the job's params nor the version's provenance.
    params = {**RECIPE_DEFAULTS[body.recipe], **body.model_dump(exclude_none=True, exclude={"teacher": {"key"}})}
    teacher = Teacher(body.teacher.url, body.teacher.model, body.teacher.key) if body.teacher else None
    request = TrainingRequest(adapter=name, corpus=corpus, recipe=body.recipe, rank=body.rank,
                              epochs=params["epochs"], max_examples=body.max_examples,
                              learning_rate=params["learning_rate"], evalset=evalset,
                              promote=promote, teacher=teacher,
                              requested_by=principal, params=params)
    return accepted(state.trainings.submit(request))
