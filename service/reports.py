"""Domain reports: one table of the routes to a domain's knowledge on one evaluation set (closed book,
retrieval, tuned configuration, reader, memorize closed book and with retrieval, composed), each row
one ordinary evaluation run on the same items, with the paired bootstrap interval of its difference
against the retrieval row. A `report` job; what feeds each row is service/report_plan.py's.

The runs are made one after the other for the key that started the report (EvalService.authorise),
each candidate adapter loaded without being routed (SwapService.stage), the live domain untouched.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from adapters_store import adapter_repo, eval_repo, tenancy
from adapters_store.errors import NotFound
from adapters_store.models import Job, JobKind, utcnow
from evaluation.compare import compare_runs
from service.auth import Principal
from service.evals import EvalRequest, EvalService
from service.report_plan import REFERENCE, plan
from service.swap import SwapService

log = logging.getLogger(__name__)
KIND = JobKind.REPORT.value


@dataclass(frozen=True)
class ReportRequest:
    domain: str
    evalset: str
    routes: dict = field(default_factory=dict)  # ingredient → {name, version} | {version} | False
    max_tokens: int = 64
    # The key that started it: every run is made for it (EvalService.authorise).
    requested_by: Principal = field(kw_only=True)


def table(rows: list[dict], scores: dict[str, dict[str, dict]], seed: int = 0) -> list[dict]:
    """The rows with `delta` added: per metric both runs have, the paired bootstrap interval of the
    row's run minus the reference row's run over their items (evaluation/compare.py), with wins,
    losses and ties. `scores`: eval id → {item id: the item's scores}. None for the reference row,
    a row not available or a run that did not succeed."""
    reference = next(r for r in rows if r["route"] == REFERENCE)
    base = scores.get(reference.get("eval_id"))
    out = []
    for row in rows:
        delta = None
        if row["route"] != REFERENCE and base is not None and row.get("status") == "succeeded":
            delta = {metric: interval for metric, interval in
                     compare_runs(base, scores[row["eval_id"]], seed=seed).items() if interval["n"]}
        out.append({**row, "delta": delta})
    return out


class ReportService:
    def __init__(self, sessions, swaps: SwapService, evals: EvalService):
        self.sessions = sessions
        self.swaps = swaps
        self.evals = evals
        self._tasks: dict[str, asyncio.Task] = {}
        self._stopping = False

    def submit(self, request: ReportRequest) -> str:
        """Check what the request names (403 for a key that may not evaluate, 404 for an unknown domain,
        set, adapter version or configuration version), plan the rows, create the job and start it."""
        EvalService.authorise(EvalRequest(request.domain, request.evalset, requested_by=request.requested_by))
        if self.swaps.routing.get(request.domain) is None:
            raise NotFound(f"domain {request.domain!r} does not exist", param="domain", code="domain_not_found")
        with self.sessions() as session, session.begin():
            evalset = eval_repo.get_evalset(session, request.evalset)
            rows = plan(session, adapter_repo.get_domain(session, request.domain), request.routes,
                        self.swaps.routing.base_model)
            runs = sum(r["available"] for r in rows)
            job = Job(id=str(uuid.uuid4()), kind=KIND, status="queued", tenant=tenancy.tenant_of(request.domain),
                      params={"domain": request.domain, "evalset": request.evalset,
                              "evalset_sha256": evalset.sha256, "max_tokens": request.max_tokens, "rows": rows},
                      progress={"stage": "queued", "runs_done": 0, "runs_total": runs})
            session.add(job)
            job_id = job.id
        task = asyncio.create_task(self._run_logged(job_id, request, rows), name=f"report-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return job_id

    def of_domain(self, domain: str, limit: int) -> list[dict]:
        """The domain's reports, newest first: {job_id, status, reason, evalset, created_at, result}."""
        owner = tenancy.tenant_of(domain)
        whose = Job.tenant == owner if owner is not None else Job.tenant.is_(None)
        with self.sessions() as session:
            jobs = session.scalars(select(Job).where(Job.kind == KIND, whose)
                                   .order_by(Job.created_at.desc(), Job.id.desc()))
            found = [job for job in jobs if (job.params or {}).get("domain") == domain][:limit]
            return [{"object": "domain.report", "job_id": job.id, "status": job.status, "reason": job.reason,
                     "evalset": job.params["evalset"], "created_at": int(job.created_at.timestamp()),
                     "result": job.result} for job in found]

    def cancel(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def stop(self) -> None:
        """At shutdown: reports in progress end as failed (with the reason), not cancelled."""
        self._stopping = True
        for task in list(self._tasks.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def fail_unfinished(self) -> None:
        """At start-up: a report cut short by a restart is marked failed, with the reason."""
        with self.sessions() as session, session.begin():
            for job in session.query(Job).filter(Job.kind == KIND, Job.status.in_(("queued", "running"))):
                job.status, job.updated_at = "failed", utcnow()
                job.reason = "the gateway restarted during the report; start it again"

    async def _run_logged(self, job_id: str, request: ReportRequest, rows: list[dict]) -> None:
        try:
            result = await self._run(job_id, request, rows)
            self._update(job_id, status="succeeded", result=result, progress={"stage": "done"})
        except asyncio.CancelledError:
            if self._stopping:
                self._update(job_id, status="failed", reason="the gateway stopped during the report; start it again")
            else:
                self._update(job_id, status="cancelled", reason="cancelled")
            raise
        except Exception as exc:
            log.exception("report %s failed", job_id)
            self._update(job_id, status="failed", reason=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")

    async def _run(self, job_id: str, request: ReportRequest, rows: list[dict]) -> dict:
        started = time.perf_counter()
        total = sum(r["available"] for r in rows)
        self._update(job_id, status="running", progress={"stage": REFERENCE})
        # The reference first: without it no row has an interval, and the report fails.
        order = sorted(range(len(rows)), key=lambda i: rows[i]["route"] != REFERENCE)
        done, scores = 0, {}
        for index in order:
            row = rows[index]
            if not row["available"]:
                continue
            self._update(job_id, progress={"stage": row["route"], "runs_done": done, "runs_total": total})
            rows[index] = row = {**row, **await self._score(request, row)}
            if row["status"] == "succeeded":
                scores[row["eval_id"]] = self._item_scores(row["eval_id"])
            elif row["route"] == REFERENCE:
                raise RuntimeError(f"the reference run ({REFERENCE}) {row['status']}: {row['reason']}")
            done += 1
            self._update(job_id, progress={"runs_done": done})
        with self.sessions() as session:
            sha256 = eval_repo.get_evalset(session, request.evalset).sha256
        return {"domain": request.domain, "evalset": request.evalset, "evalset_sha256": sha256,
                "reference": REFERENCE, "max_tokens": request.max_tokens, "rows": table(rows, scores),
                "seconds": round(time.perf_counter() - started, 3)}

    async def _score(self, request: ReportRequest, row: dict) -> dict:
        """One evaluation run of the row: {status, eval_id, metrics, reason}. A row whose run fails (or
        whose adapter does not load) says so; the other rows still run."""
        adapter = row["adapter"]
        try:
            engine_model = await self.swaps.stage(adapter["name"], adapter["version"]) if adapter else row["engine_model"]
            try:
                run = await self.evals.run(EvalRequest(
                    request.domain, request.evalset, engine_model=engine_model,
                    adapter={"name": adapter["name"], "version": adapter["version"]} if adapter else None,
                    retrieval=None if row["retrieval"] else False, max_tokens=request.max_tokens,
                    config=row["config"], requested_by=request.requested_by))
            finally:
                if adapter:
                    self.swaps.release(engine_model)
        except Exception as exc:
            log.warning("report row %s: %s", row["route"], exc)
            return {"status": "failed", "eval_id": None, "metrics": None,
                    "reason": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"}
        with self.sessions() as session:
            reason = session.get(Job, run["job_id"]).reason
        return {"status": run["status"], "eval_id": run["id"], "metrics": run["metrics"], "reason": reason}

    def _item_scores(self, eval_id: str) -> dict[str, dict]:
        with self.sessions() as session:
            return {item.item_id: item.scores
                    for item in eval_repo.eval_items(session, eval_repo.get_eval(session, eval_id))}

    def _update(self, job_id: str, *, status: str | None = None, progress: dict | None = None,
                result: dict | None = None, reason: str | None = None) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if status is not None:
                job.status = status
            if progress is not None:
                job.progress = {**(job.progress or {}), **progress}
            if result is not None:
                job.result = result
            if reason is not None:
                job.reason = reason
            job.updated_at = utcnow()
