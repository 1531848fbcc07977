"""What the routes answer, as the OpenAPI document shows it (documentation only: routes build their
own dicts, and nothing here filters them). Each model holds the fields clients rely on (DESIGN.md);
every one stays open to fields added later. Attach with `responses=answers(Model)`."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adapters_store.models import JobKind, JobStatus


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def answers(model: type[BaseModel], *statuses: int, stream: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route decorator: the schema of its success answer (200 unless `statuses`
    say otherwise); with `stream`, a 200 may also be server-sent events."""
    documented: dict[int | str, dict[str, Any]] = {status: {"model": model} for status in statuses or (200,)}
    if stream:
        documented[200]["description"] = "The answer as JSON, or with `stream: true` as server-sent events"
        documented[200]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
    return documented


class JobAccepted(_Open):
    """A job started: follow it at GET /v1/jobs/{job_id} (the Location header)."""
    job_id: str
    status: Literal[JobStatus.QUEUED]


class Job(_Open):
    object: Literal["job"]
    id: str
    kind: JobKind
    status: JobStatus
    progress: dict[str, Any]
    errors: list[Any]
    result: dict[str, Any] | None


class JobList(_Open):
    object: Literal["list"]
    data: list[Job]
    has_more: bool


class JobCancelling(_Open):
    object: Literal["job"]
    id: str
    status: Literal["cancelling"]


class Deleted(_Open):
    object: str
    deleted: Literal[True]


class Corpus(_Open):
    object: Literal["corpus"]
    name: str
    documents: int
    chunks: int
    generation: int | None
    chunk_size: int
    chunk_overlap: int
    embedding_model: str


class CorpusList(_Open):
    object: Literal["list"]
    data: list[Corpus]


class Document(_Open):
    object: Literal["document"]
    id: str | None
    chunks: int
    metadata: dict[str, Any]


class DocumentList(_Open):
    object: Literal["list"]
    data: list[Document]
    has_more: bool


class Hit(_Open):
    corpus: str
    document_id: str | None
    chunk_id: int
    score: float
    text: str
    metadata: dict[str, Any]


class SearchResult(_Open):
    object: Literal["list"]
    hits: list[Hit]


class AdapterCreated(_Open):
    adapter: str
    version: int
    sha256: str
    engine_model: str


class AdapterVersion(_Open):
    object: Literal["adapter.version"]
    adapter: str
    version: int
    sha256: str
    rank: int
    engine_model: str
    bytes: int | None = Field(None, description="the size of its files in the store")


class AdapterVersionList(_Open):
    object: Literal["list"]
    data: list[AdapterVersion]


class Adapter(_Open):
    object: Literal["adapter"]
    name: str
    versions: list[int]


class AdapterList(_Open):
    object: Literal["list"]
    data: list[Adapter]


class BoundAdapter(_Open):
    name: str
    version: int


class Domain(_Open):
    object: Literal["domain"]
    name: str
    corpora: list[str]
    adapter: BoundAdapter | None
    engine_model: str
    system_prompt: str | None
    description: str | None
    retrieval: dict[str, Any]


class DomainSwapped(Domain):
    swap_seconds: float


class DomainList(_Open):
    object: Literal["list"]
    data: list[Domain]


class DomainConfigVersion(_Open):
    """A domain configuration version: what a tuning found, with the scores that chose it."""
    object: Literal["domain.config"]
    domain: str
    version: int
    config: dict[str, Any]
    applied: bool
    tuning_score: float | None
    holdout_score: float | None
    current_score: float | None


class DomainConfigDetail(DomainConfigVersion):
    diff: dict[str, Any]  # {field: {current, config}} for each field that differs from the live one
    trials: list[dict[str, Any]]


class DomainConfigList(_Open):
    object: Literal["list"]
    data: list[DomainConfigVersion]


class DomainConfigApplied(Domain):
    config_version: int | None
    gate_result: dict[str, Any] | None


class DomainReport(_Open):
    """A domain report (a `report` job): `result` holds the table once it succeeded (docs/api.md)."""
    object: Literal["domain.report"]
    job_id: str
    status: JobStatus
    evalset: str
    result: dict[str, Any] | None


class DomainReportList(_Open):
    object: Literal["list"]
    data: list[DomainReport]


class HistoryEntry(_Open):
    at: int
    action: str


class DomainHistory(_Open):
    object: Literal["list"]
    data: list[HistoryEntry]


class Model(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Open):
    object: Literal["list"]
    data: list[Model]


class Citation(_Open):
    index: int
    corpus: str
    document_id: str | None
    chunk_id: int
    score: float
    text: str


class Completion(_Open):
    """The engine's OpenAI completion, with `model` as the client named it, the engine model that
    answered (`adapter`) and the passages the prompt held (`citations`)."""
    object: str
    model: str
    choices: list[dict[str, Any]]
    adapter: str
    citations: list[Citation]


class EvalSet(_Open):
    object: Literal["evalset"]
    name: str
    items: int
    sha256: str


class EvalSetList(_Open):
    object: Literal["list"]
    data: list[EvalSet]


class Eval(_Open):
    object: Literal["eval"]
    id: str
    domain: str
    evalset: str
    status: str
    metrics: dict[str, Any] | None


class EvalList(_Open):
    object: Literal["list"]
    data: list[Eval]


class EvalItems(_Open):
    object: Literal["list"]
    items: list[dict[str, Any]]


class Engine(_Open):
    object: Literal["engine"]
    url: str
    healthy: bool
    ready: bool


class EngineList(_Open):
    object: Literal["list"]
    data: list[Engine]


class Tenant(_Open):
    object: Literal["tenant"]
    name: str
    limits: dict[str, Any] | None


class TenantList(_Open):
    object: Literal["list"]
    data: list[Tenant]


class ApiKey(_Open):
    object: Literal["api_key"]
    id: int
    name: str
    prefix: str
    scope: Literal["inference", "admin"]
    tenant: str | None
    domains: list[str] | None
    filter: dict[str, Any] | None
    limits: dict[str, Any] | None
    revoked: bool


class ApiKeyCreated(ApiKey):
    key: str  # the secret: shown once


class ApiKeyList(_Open):
    object: Literal["list"]
    data: list[ApiKey]


class AuditEvent(_Open):
    id: int
    at: int
    api_key_id: int | None
    tenant: str | None
    action: str
    target: str
    details: dict[str, Any] | None


class AuditEventList(_Open):
    object: Literal["list"]
    data: list[AuditEvent]
    has_more: bool
