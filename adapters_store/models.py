"""SQLAlchemy models of graft's store. The schema changes only through Alembic migrations."""

from datetime import datetime, timezone
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Corpus(Base):
    __tablename__ = "corpora"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    chunk_size: Mapped[int] = mapped_column(Integer)
    chunk_overlap: Mapped[int] = mapped_column(Integer)
    embedding_model: Mapped[str] = mapped_column(String(256))
    # Embed and BM25-index each chunk under its document's title and section path.
    contextual_headers: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The generation that searches use; None until the first one is committed.
    current_generation: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    documents: Mapped[list["Document"]] = relationship(
        back_populates="corpus", cascade="all, delete-orphan", passive_deletes=True
    )


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("corpus_id", "external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(512))  # client-given id or file name
    content_sha256: Mapped[str] = mapped_column(String(64))
    doc_metadata: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # The raw upload it was extracted from, kept for index rebuilds (None: ingested before they were kept).
    raw_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    raw_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    corpus: Mapped[Corpus] = relationship(back_populates="documents")


class Chunk(Base):
    __tablename__ = "chunks"

    # Stable 64-bit id shared with the FAISS and BM25 indexes.
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[int] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), index=True
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int] = mapped_column(Integer, default=0)
    end_char: Mapped[int] = mapped_column(Integer, default=0)
    # Title and section path embedded and BM25-indexed with the text (None: indexed without one).
    header: Mapped[str | None] = mapped_column(Text, nullable=True)


class IndexGeneration(Base):
    __tablename__ = "index_generations"
    __table_args__ = (UniqueConstraint("corpus_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    corpus_id: Mapped[int] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    index_kind: Mapped[str] = mapped_column(String(32), default="flat")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class JobKind(StrEnum):
    """What a job does: the one list of job kinds (their values are what the API shows)."""
    INGEST = "ingest"
    REBUILD = "rebuild"
    EVAL = "eval"
    TRAIN = "train"
    TUNE = "tune"
    REPORT = "report"


class JobStatus(StrEnum):
    """Where a job is: the one list of job statuses."""
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
TERMINAL_STATUSES = frozenset(JobStatus) - UNFINISHED_STATUSES  # a job in one of these never changes again


class Job(Base):
    """Every long task: ingestion (`ingest`, with a corpus and items), evaluation (`eval`), …"""
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="ingest", server_default="ingest")
    corpus_id: Mapped[int | None] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"), index=True,
                                                  nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    documents_total: Mapped[int] = mapped_column(Integer, default=0)
    documents_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list] = mapped_column(JSON, default=list)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the job asked for (kind-specific) and what it produced, e.g. {"eval_id": ...}.
    params: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # kind-specific live figures
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # whose job; None: global
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    items: Mapped[list["JobItem"]] = relationship(
        back_populates="job", cascade="all, delete-orphan", order_by="JobItem.id"
    )


class JobItem(Base):
    """One uploaded file or JSON document of a job, its raw bytes stored durably on disk."""

    __tablename__ = "job_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    external_id: Mapped[str | None] = mapped_column(String(512), nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    item_metadata: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    raw_path: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|done|failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    job: Mapped[Job] = relationship(back_populates="items")


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list["AdapterVersion"]] = relationship(
        back_populates="adapter", order_by="AdapterVersion.version"
    )


class AdapterVersion(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("adapter_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    rank: Mapped[int] = mapped_column(Integer)
    target_modules: Mapped[list] = mapped_column(JSON, default=list)
    # Deleted versions keep their row so that a version number is never reused.
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # How a trained version was made (corpus, generation, recipe, params, data hash, loss, eval).
    provenance: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    adapter: Mapped[Adapter] = relationship(back_populates="versions")

    @property
    def engine_name(self) -> str:
        return f"{self.adapter.name}@{self.version}"


class Domain(Base):
    __tablename__ = "domains"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    corpora: Mapped[list] = mapped_column(JSON, default=list)  # corpus names, in order
    adapter_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id"), nullable=True
    )
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What the domain knows, in a sentence or two: shown to agents (MCP list_domains), not to the model.
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    retrieval: Mapped[dict] = mapped_column(JSON, default=dict)  # {k, mode, min_score}
    gate: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # default {evalset, metric, min_delta}
    # The rest of what a configuration version sets (None: the defaults): the prompt template's name
    # (service/rag/prompt.py TEMPLATES), few-shot [{question, answer}], the default max_tokens.
    prompt_template: Mapped[str | None] = mapped_column(String(64), nullable=True)
    demonstrations: Mapped[list | None] = mapped_column(JSON, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The configuration version applied last (None: none, or changed by PUT since).
    config_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    adapter_version: Mapped[AdapterVersion | None] = relationship()


class DomainConfig(Base):
    """A configuration version of a domain (what a tuning found): retrieval settings, system prompt,
    prompt template, demonstrations and max_tokens, with the scores that chose it. Immutable."""
    __tablename__ = "domain_configs"
    __table_args__ = (UniqueConstraint("domain_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSON)
    metric: Mapped[str | None] = mapped_column(String(32), nullable=True)
    evalset: Mapped[str | None] = mapped_column(String(128), nullable=True)
    holdout: Mapped[str | None] = mapped_column(String(128), nullable=True)  # a second set, if given
    tuning_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    holdout_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    current_score: Mapped[float | None] = mapped_column(Float, nullable=True)  # the config then live, on the holdout
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    trials: Mapped[list | None] = mapped_column(JSON, nullable=True)  # [{number, params, score, state}]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DomainHistory(Base):
    __tablename__ = "domain_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(32))  # create | update | swap | rollback
    from_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id"), nullable=True
    )
    to_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id"), nullable=True
    )
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # e.g. the gate's scores


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)  # shown in listings
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    scope: Mapped[str] = mapped_column(String(16))  # inference | admin
    # The documents the key may retrieve: an indexer.filters filter in its canonical form, or None.
    metadata_filter: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # The tenant whose resources the key works on; None: a global key (adapters_store/tenancy.py).
    tenant: Mapped[str | None] = mapped_column(ForeignKey("tenants.name"), nullable=True, index=True)
    # The domains an inference key may call (short names); None: every domain of its tenant.
    domains: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # {requests_per_minute, tokens_per_minute, concurrent}: what the key may use (None: no limit of its own).
    limits: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Tenant(Base):
    """A team or customer: its corpora, adapters, domains, evaluation sets and jobs carry its name
    as a prefix (`tenant:name`, adapters_store/tenancy.py), so names are unique per tenant."""
    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # {requests_per_minute, tokens_per_minute, concurrent}: shared by all the tenant's keys.
    limits: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    """One admin change (corpus, document, adapter, domain, swap, key, tenant): who, when, what."""
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    api_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: bootstrap key or open mode
    tenant: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64))  # e.g. corpus.create, domain.swap, key.revoke
    target: Mapped[str] = mapped_column(String(256))  # the full name or id of what changed
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class EvalSet(Base):
    """Questions with expected answers and/or relevant document ids; immutable once created."""
    __tablename__ = "evalsets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))  # of the canonical JSON of its items
    items: Mapped[list] = mapped_column(JSON)  # [{id, question, answers, document_ids}]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Eval(Base):
    """One evaluation run of a domain (optionally with a candidate adapter) on an evaluation set.
    It keeps the set's name and hash, not a reference: the run outlives the set."""
    __tablename__ = "evals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    domain: Mapped[str] = mapped_column(String(128), index=True)
    evalset: Mapped[str] = mapped_column(String(128))
    evalset_sha256: Mapped[str] = mapped_column(String(64))
    engine_model: Mapped[str] = mapped_column(String(256))  # what answered: adapter@version or base
    adapter: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the candidate asked for, if any
    retrieval: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {k, mode, corpora} or None (off)
    k: Mapped[int] = mapped_column(Integer, default=0)
    max_tokens: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    items: Mapped[list["EvalItem"]] = relationship(
        back_populates="eval", cascade="all, delete-orphan", passive_deletes=True, order_by="EvalItem.id"
    )


class EvalItem(Base):
    __tablename__ = "eval_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_id: Mapped[str] = mapped_column(ForeignKey("evals.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(256))
    question: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text)
    retrieved_document_ids: Mapped[list] = mapped_column(JSON, default=list)
    cited_document_ids: Mapped[list] = mapped_column(JSON, default=list)
    scores: Mapped[dict] = mapped_column(JSON, default=dict)  # the per-item metrics
    latency_ms: Mapped[float] = mapped_column(Float)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)

    eval: Mapped[Eval] = relationship(back_populates="items")
