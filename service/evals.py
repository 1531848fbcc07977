"""Evaluation runs: each question of a set goes through the planner, prompt and engine path of a
real completion (temperature 0), a few at a time so live traffic keeps flowing; per-item results
and the summary are stored. Also the comparison a gated swap makes (`gate`)."""

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field

from adapters_store import eval_repo
from adapters_store.errors import Invalid
from adapters_store.models import Job, JobKind, JobStatus, utcnow
from evaluation.metrics import cited_document_ids, item_scores, summarize
from service.auth import Principal
from service.domains import RoutingTable, with_config
from service.engine.pool import EnginePool
from service.job_runner import JobHandle, JobRunner, JobType
from service.rag.planner import Planner


@dataclass(frozen=True)
class EvalRequest:
    domain: str
    evalset: str
    # The version to score: a candidate loaded but not routed, or the current one kept loaded
    # (SwapService.kept_loaded). None: the domain's engine model when the run is created.
    engine_model: str | None = None
    adapter: dict | None = None  # the candidate as the client named it
    retrieval: dict | bool | None = None  # a completion's `retrieval` override; False = off
    max_tokens: int = 64
    # A candidate configuration (config_repo's shape) planned instead of the domain's live one, which
    # stays as it is: a tuning's trial, a configuration's gate. Its max_tokens, if set, replaces the above.
    config: dict | None = None
    # Only these items of the set (a tuning's split or subset); None: every item.
    item_ids: tuple[str, ...] | None = None
    # The key the run is made for (a route's, a swap's, a training's): every door to an evaluation
    # names one, and `EvalService.authorise` decides on it.
    requested_by: Principal = field(kw_only=True)


@dataclass(frozen=True)
class GateResult:
    metric: str
    min_delta: float
    current: float | None
    candidate: float | None
    current_eval: str
    candidate_eval: str

    @property
    def passed(self) -> bool:
        if self.candidate is None or self.current is None:
            return False
        return self.candidate - self.current >= self.min_delta

    def as_dict(self) -> dict:
        return {"metric": self.metric, "min_delta": self.min_delta, "current": self.current,
                "candidate": self.candidate, "current_eval_id": self.current_eval,
                "candidate_eval_id": self.candidate_eval, "passed": self.passed}


class EvalService:
    def __init__(self, sessions, routing: RoutingTable, planner: Planner, pool: EnginePool, concurrency: int,
                 runner: JobRunner):
        self.sessions = sessions
        self.routing = routing
        self.planner = planner
        self.pool = pool
        self.concurrency = concurrency
        self.runner = runner
        self.job_type = runner.register(JobType(JobKind.EVAL, "evaluation", on_end=_end_run))

    @staticmethod
    def authorise(request: EvalRequest) -> None:
        """The one check every evaluation passes (explicit runs, swap gates, trainings, tunings): a
        key with a document filter may not run one, since a run reads every document of the
        domain's corpora and its scores and items would show what the filter hides."""
        request.requested_by.check_reads_whole_corpora("an evaluation")

    def check(self, request: EvalRequest) -> None:
        """Forbidden for a key that may not evaluate; NotFound for an unknown domain or evaluation set."""
        self.authorise(request)
        self.routing.require(request.domain)
        with self.sessions() as session:
            eval_repo.get_evalset(session, request.evalset)

    def submit(self, request: EvalRequest, holding: contextlib.AsyncExitStack | None = None) -> tuple[str, str]:
        """Create the run and its job, start it in the background; (job id, eval id). `holding`:
        what the run keeps until it ends (JobRunner.start)."""
        run_id, job_id = self._create(request)
        self.runner.start(job_id, self.job_type, functools.partial(self._run, run_id, request), holding)
        return job_id, run_id

    async def run(self, request: EvalRequest) -> dict:
        """Run to the end here (a gate waits for its numbers); the finished run as a dict."""
        run_id, job_id = self._create(request)
        await self.runner.run(job_id, self.job_type, functools.partial(self._run, run_id, request))
        with self.sessions() as session:
            return eval_repo.eval_as_dict(eval_repo.get_eval(session, run_id))

    async def gate(self, domain: str, candidate: str, gate: dict, requested_by: Principal,
                   config: dict | None = None) -> GateResult:
        """Score the current binding and the candidate on the same set, one after the other. `config`:
        the candidate is that configuration (on `candidate`, the current engine model) rather than an adapter."""
        current = await self.run(EvalRequest(domain, gate["evalset"], requested_by=requested_by))
        challenger = await self.run(EvalRequest(domain, gate["evalset"], engine_model=candidate, config=config,
                                                requested_by=requested_by))
        for run in (current, challenger):
            if run["status"] != JobStatus.SUCCEEDED:
                raise Invalid(f"the gate's evaluation {run['id']} {run['status']}", param="gate",
                              code="gate_eval_failed")
        metric = gate["metric"]
        return GateResult(metric, gate["min_delta"], current["metrics"][metric], challenger["metrics"][metric],
                          current["id"], challenger["id"])

    def _create(self, request: EvalRequest) -> tuple[str, str]:
        self.authorise(request)
        route = self.routing.require(request.domain)
        if request.config is not None:
            route = with_config(route, request.config)
        retrieval = None
        if request.retrieval is not False:
            retrieval = {**route.retrieval, "corpora": list(route.corpora), **(request.retrieval or {})}
        with self.sessions() as session, session.begin():
            evalset = eval_repo.get_evalset(session, request.evalset)
            total = None
            if request.item_ids is not None:
                total = len(_chosen(evalset.items, request.item_ids))
            run = eval_repo.create_eval(
                session, domain=request.domain, evalset=evalset, adapter=request.adapter,
                engine_model=request.engine_model or route.engine_model, retrieval=retrieval,
                k=retrieval["k"] if retrieval else 0, max_tokens=_max_tokens(request), total=total,
                config=request.config)
            return run.id, run.job_id

    async def _run(self, run_id: str, request: EvalRequest, _: JobHandle) -> dict:
        with self.sessions() as session, session.begin():
            run = eval_repo.get_eval(session, run_id)
            items = eval_repo.get_evalset(session, run.evalset).items
            if request.item_ids is not None:
                items = _chosen(items, request.item_ids)
            run.status = JobStatus.RUNNING
            engine_model, k = run.engine_model, run.k
        override = request.retrieval if request.retrieval is not None else None
        slots = asyncio.Semaphore(self.concurrency)

        async def one(item: dict) -> dict:
            async with slots:
                return await self._ask(request.domain, item, engine_model, override, k, _max_tokens(request),
                                       request.config)

        results = []
        tasks = [asyncio.create_task(one(item)) for item in items]
        try:
            for done in asyncio.as_completed(tasks):
                result = await done
                results.append(result)
                with self.sessions() as session, session.begin():
                    run = eval_repo.get_eval(session, run_id)
                    eval_repo.add_item(session, run, **result)
                    row = session.get(Job, run.job_id)
                    row.documents_done, row.updated_at = len(results), utcnow()
        finally:  # a failed question or a cancel stops the others
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        metrics = summarize([r["scores"] for r in results], [r["latency_ms"] for r in results],
                            [r["completion_tokens"] for r in results])
        with self.sessions() as session, session.begin():
            # its status follows the job's (_end_run)
            eval_repo.get_eval(session, run_id).metrics = metrics
        return {"eval_id": run_id}

    async def _ask(self, domain: str, item: dict, engine_model: str, override, k: int, max_tokens: int,
                   config: dict | None = None) -> dict:
        body = {"model": domain, "messages": [{"role": "user", "content": item["question"]}],
                "temperature": 0, "max_tokens": max_tokens}
        if override is not None:
            body["retrieval"] = override
        started = time.perf_counter()
        plan = await self.planner.plan("chat", body, engine_model=engine_model, config=config)
        async with self.pool.lease(plan.engine_model) as engine:
            answer = await engine.client.complete("/v1/chat/completions", plan.payload)
        latency_ms = (time.perf_counter() - started) * 1000
        output = (answer["choices"][0].get("message") or {}).get("content") or ""
        cited = cited_document_ids(output, [c["document_id"] for c in plan.citations])
        retrieved = plan.retrieved[:k]
        scores = item_scores(retrieved=retrieved, relevant=item.get("document_ids") or [], k=k, output=output,
                             answers=item.get("answers") or [], cited=cited,
                             unanswerable=bool(item.get("unanswerable")))
        return {"item_id": item["id"], "question": item["question"], "output": output,
                "retrieved_document_ids": retrieved, "cited_document_ids": cited, "scores": scores,
                "latency_ms": latency_ms,
                "completion_tokens": (answer.get("usage") or {}).get("completion_tokens", 0)}


def _end_run(session, job: Job) -> None:
    """The run ends with its job, in the same transaction; its metrics only when it succeeded."""
    run = eval_repo.get_eval(session, job.params["eval_id"])
    eval_repo.finish_eval(session, run, job.status, run.metrics if job.status == JobStatus.SUCCEEDED else None)


def _chosen(items: list[dict], item_ids: tuple[str, ...]) -> list[dict]:
    wanted = set(item_ids)
    return [item for item in items if item["id"] in wanted]


def _max_tokens(request: EvalRequest) -> int:
    if request.config is not None and request.config.get("max_tokens") is not None:
        return request.config["max_tokens"]
    return request.max_tokens
