"""SQL access for evaluation sets, evaluation runs and their per-item results."""

import hashlib
import json
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from adapters_store import tenancy
from adapters_store.errors import Conflict, NotFound
from adapters_store.models import Eval, EvalItem, EvalSet, Job, JobKind, JobStatus, utcnow


def items_sha256(items: list[dict]) -> str:
    """The content hash of a set: canonical JSON of its items, in order."""
    canonical = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_evalset(session: Session, name: str, items: list[dict]) -> EvalSet:
    evalset = EvalSet(name=name, items=items, sha256=items_sha256(items))
    session.add(evalset)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"evaluation set {name!r} already exists (sets are immutable: use a new name)",
                       param="name", code="evalset_exists") from exc
    return evalset


def get_evalset(session: Session, name: str) -> EvalSet:
    evalset = session.scalar(select(EvalSet).where(EvalSet.name == name))
    if evalset is None:
        raise NotFound(f"evaluation set {name!r} does not exist", param="evalset", code="evalset_not_found")
    return evalset


def list_evalsets(session: Session) -> list[EvalSet]:
    return list(session.scalars(select(EvalSet).order_by(EvalSet.name)))


def evalset_as_dict(evalset: EvalSet, with_items: bool = False) -> dict:
    body = {"object": "evalset", "name": evalset.name, "items": len(evalset.items), "sha256": evalset.sha256,
            "created_at": int(evalset.created_at.timestamp())}
    if with_items:
        body["data"] = evalset.items
    return body


def create_eval(session: Session, *, domain: str, evalset: EvalSet, engine_model: str, adapter: dict | None,
                retrieval: dict | None, k: int, max_tokens: int, job_kind: JobKind = JobKind.EVAL,
                total: int | None = None, config: dict | None = None) -> Eval:
    """An evaluation run and the job that tracks it (progress counts items). `total`: the items it
    runs when not all of the set's (a tuning's subset); `config`: the candidate configuration it scores."""
    job = Job(id=str(uuid.uuid4()), kind=job_kind, status=JobStatus.QUEUED,
              documents_total=len(evalset.items) if total is None else total,
              tenant=tenancy.tenant_of(domain))
    run = Eval(id=str(uuid.uuid4()), job_id=job.id, domain=domain, evalset=evalset.name,
               evalset_sha256=evalset.sha256, engine_model=engine_model, adapter=adapter, retrieval=retrieval,
               k=k, max_tokens=max_tokens, status=JobStatus.QUEUED)
    job.params = {"eval_id": run.id, **({"config": config} if config is not None else {})}
    session.add_all([job, run])
    session.flush()
    return run


def get_eval(session: Session, eval_id: str) -> Eval:
    run = session.get(Eval, eval_id)
    if run is None:
        raise NotFound(f"evaluation {eval_id!r} does not exist", param="eval_id", code="eval_not_found")
    return run


def add_item(session: Session, run: Eval, **fields) -> None:
    session.add(EvalItem(eval_id=run.id, **fields))


def finish_eval(session: Session, run: Eval, status: str, metrics: dict | None) -> None:
    run.status = status
    run.metrics = metrics
    run.finished_at = utcnow()


def list_evals(session: Session, domain: str | None = None, limit: int = 100, *, tenant: str | None = None
               ) -> list[Eval]:
    """The newest runs, of one domain or all; with `tenant`, only that tenant's (by its job's tenant
    column: never by a name prefix, which SQLite's LIKE would match in any case)."""
    query = select(Eval).order_by(Eval.created_at.desc()).limit(limit)
    if domain is not None:
        query = query.where(Eval.domain == domain)
    if tenant is not None:
        query = query.join(Job, Job.id == Eval.job_id).where(Job.tenant == tenant)
    return list(session.scalars(query))


def eval_as_dict(run: Eval) -> dict:
    return {"object": "eval", "id": run.id, "job_id": run.job_id, "domain": run.domain, "evalset": run.evalset,
            "evalset_sha256": run.evalset_sha256, "adapter": run.engine_model, "candidate": run.adapter,
            "retrieval": run.retrieval, "k": run.k, "max_tokens": run.max_tokens, "status": run.status,
            "metrics": run.metrics, "items": (run.metrics or {}).get("items"),
            "created_at": int(run.created_at.timestamp()),
            "finished_at": int(run.finished_at.timestamp()) if run.finished_at else None}


def eval_items(session: Session, run: Eval) -> list[EvalItem]:
    return list(session.scalars(select(EvalItem).where(EvalItem.eval_id == run.id).order_by(EvalItem.id)))


def eval_item_as_dict(item: EvalItem) -> dict:
    return {"id": item.item_id, "question": item.question, "output": item.output,
            "retrieved_document_ids": item.retrieved_document_ids,
            "cited_document_ids": item.cited_document_ids, **item.scores,
            "hit": item.scores.get("hit_at_k"), "latency_ms": item.latency_ms,
            "completion_tokens": item.completion_tokens}
