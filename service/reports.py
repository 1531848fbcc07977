"""Domain reports: one table of the routes to a domain's knowledge on one evaluation set (closed book,
retrieval, tuned configuration, reader, memorize closed book and with retrieval, composed), each row
one ordinary evaluation run on the same items, with the paired bootstrap interval of its difference
against the retrieval row. A `report` job; what feeds each row is service/report_plan.py's.

The runs are made one after the other for the key that started the report (EvalService.authorise),
each candidate adapter kept loaded without being routed (SwapService.kept_loaded), the live domain
untouched. The job runs on the one job runner (service/job_runner.py).
"""

import contextlib
import functools
import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import select

from adapters_store import adapter_repo, eval_repo, tenancy
from adapters_store.models import Job, JobKind, JobStatus
from evaluation.compare import compare_runs
from service.auth import Principal
from service.evals import EvalRequest, EvalService
from service.job_runner import JobHandle, JobRunner, JobType
from service.report_plan import REFERENCE, plan
from service.swap import SwapService

log = logging.getLogger(__name__)


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
    def __init__(self, sessions, swaps: SwapService, evals: EvalService, runner: JobRunner):
        self.sessions = sessions
        self.swaps = swaps
        self.evals = evals
        self.runner = runner
        self.job_type = runner.register(JobType(JobKind.REPORT, "report"))

    def submit(self, request: ReportRequest) -> str:
        """Check what the request names (403 for a key that may not evaluate, 404 for an unknown domain,
        set, adapter version or configuration version), plan the rows, create the job and start it."""
        EvalService.authorise(EvalRequest(request.domain, request.evalset, requested_by=request.requested_by))
        self.swaps.routing.require(request.domain)
        with self.sessions() as session, session.begin():
            evalset = eval_repo.get_evalset(session, request.evalset)
            rows = plan(session, adapter_repo.get_domain(session, request.domain), request.routes,
                        self.swaps.routing.base_model)
            runs = sum(r["available"] for r in rows)
            job = Job(id=str(uuid.uuid4()), kind=JobKind.REPORT, status=JobStatus.QUEUED,
                      tenant=tenancy.tenant_of(request.domain),
                      params={"domain": request.domain, "evalset": request.evalset,
                              "evalset_sha256": evalset.sha256, "max_tokens": request.max_tokens, "rows": rows},
                      progress={"stage": "queued", "runs_done": 0, "runs_total": runs})
            session.add(job)
            job_id = job.id
        self.runner.start(job_id, self.job_type, functools.partial(self._run, request, rows))
        return job_id

    def of_domain(self, domain: str, limit: int) -> list[dict]:
        """The domain's reports, newest first: {job_id, status, reason, evalset, created_at, result}."""
        owner = tenancy.tenant_of(domain)
        whose = Job.tenant == owner if owner is not None else Job.tenant.is_(None)
        with self.sessions() as session:
            jobs = session.scalars(select(Job).where(Job.kind == JobKind.REPORT, whose)
                                   .order_by(Job.created_at.desc(), Job.id.desc()))
            found = [job for job in jobs if (job.params or {}).get("domain") == domain][:limit]
            return [{"object": "domain.report", "job_id": job.id, "status": job.status, "reason": job.reason,
                     "evalset": job.params["evalset"], "created_at": int(job.created_at.timestamp()),
                     "result": job.result} for job in found]

    async def _run(self, request: ReportRequest, rows: list[dict], job: JobHandle) -> dict:
        started = time.perf_counter()
        total = sum(r["available"] for r in rows)
        job.stage(REFERENCE, runs_done=0, runs_total=total)
        # The reference first: without it no row has an interval, and the report fails.
        order = sorted(range(len(rows)), key=lambda i: rows[i]["route"] != REFERENCE)
        done, scores = 0, {}
        for index in order:
            row = rows[index]
            if not row["available"]:
                continue
            job.report(stage=row["route"], runs_done=done, runs_total=total)
            rows[index] = row = {**row, **await self._score(request, row)}
            if row["status"] == "succeeded":
                scores[row["eval_id"]] = self._item_scores(row["eval_id"])
            elif row["route"] == REFERENCE:
                raise RuntimeError(f"the reference run ({REFERENCE}) {row['status']}: {row['reason']}")
            done += 1
            job.report(runs_done=done)
        with self.sessions() as session:
            sha256 = eval_repo.get_evalset(session, request.evalset).sha256
        job.stage("done")
        return {"domain": request.domain, "evalset": request.evalset, "evalset_sha256": sha256,
                "reference": REFERENCE, "max_tokens": request.max_tokens, "rows": table(rows, scores),
                "seconds": round(time.perf_counter() - started, 3)}

    async def _score(self, request: ReportRequest, row: dict) -> dict:
        """One evaluation run of the row: {status, eval_id, metrics, reason}. A row whose run fails (or
        whose adapter does not load) says so; the other rows still run."""
        adapter = row["adapter"]
        try:
            async with contextlib.AsyncExitStack() as held:
                engine_model = row["engine_model"]
                if adapter:
                    engine_model = await held.enter_async_context(
                        self.swaps.kept_loaded(request.domain, (adapter["name"], adapter["version"])))
                run = await self.evals.run(EvalRequest(
                    request.domain, request.evalset, engine_model=engine_model,
                    adapter={"name": adapter["name"], "version": adapter["version"]} if adapter else None,
                    retrieval=None if row["retrieval"] else False, max_tokens=request.max_tokens,
                    config=row["config"], requested_by=request.requested_by))
        except Exception as exc:
            log.warning("report row %s: %s", row["route"], exc)
            return {"status": JobStatus.FAILED, "eval_id": None, "metrics": None,
                    "reason": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"}
        with self.sessions() as session:
            reason = session.get(Job, run["job_id"]).reason
        return {"status": run["status"], "eval_id": run["id"], "metrics": run["metrics"], "reason": reason}

    def _item_scores(self, eval_id: str) -> dict[str, dict]:
        with self.sessions() as session:
            return {item.item_id: item.scores
                    for item in eval_repo.eval_items(session, eval_repo.get_eval(session, eval_id))}
