"""Domain tunings: search a domain's configuration (retrieval mode, k, min_score, max_tokens, prompt
template, system prompt, few-shot demonstrations) on an evaluation set, and store the best one found
as a configuration version (adapters_store/config_repo.py) that an operator applies through a gate.

The search is Optuna's: a seeded TPE sampler proposes each trial's configuration, and a successive
halving pruner stops a trial early when its score on a first part of the tuning items is behind the
others' (each trial is scored on a growing subset: a quarter, a half, then all of them). Every score
is a real evaluation run (service/evals.py, the planner, prompt and engine path of a completion) of the
candidate configuration, made for the key that started the tuning; the live domain never changes.

Items split by a hash of their id: about 70 % tune, the rest are the holdout on which the winner and
the live configuration are both scored at the end (or every item tunes and a second set given as
`holdout` is the holdout). Demonstrations are tuning items the live configuration answered right,
shown with their expected answer; they are then left out of the items every trial is scored on.
"""

import functools
import hashlib
import itertools
import json
import math
import random
import time
import uuid
from dataclasses import dataclass, field

import optuna

from adapters_store import adapter_repo, config_repo, eval_repo, tenancy
from adapters_store.errors import Invalid
from adapters_store.models import Job, JobKind, JobStatus
from service.auth import Principal
from service.domains import DomainRoute
from service.evals import EvalRequest, EvalService
from service.job_runner import JobHandle, JobRunner, JobType
from service.rag.prompt import TEMPLATES
from service.swap import SwapService

optuna.logging.set_verbosity(optuna.logging.WARNING)

TUNING_SHARE = 70  # of 100 buckets of an item id's hash: the tuning split; the rest is the holdout
SUBSETS = (0.25, 0.5, 1.0)  # the growing shares of the tuning items a trial is scored on
MAX_DEMONSTRATIONS = 3
MAX_GRID = 10_000  # past this many combinations a space is not enumerated (it is larger than any budget)
# System prompts tried besides the domain's own and none.
SYSTEM_PROMPTS = (
    "You answer questions about this domain's documents. Answer briefly and exactly, using only the passages.",
    "You are a careful expert. Give the shortest exact answer; if the passages do not say, say you do not know.",
)
# min_score thresholds tried per retrieval mode (its scores differ: cosine, BM25, reciprocal rank fusion).
MIN_SCORES = {"dense": [None, 0.25, 0.4], "bm25": [None, 2.0], "hybrid": [None, 0.02]}
DEFAULT_SPACE = {"k": [1, 2, 3, 4, 6, 8], "mode": ["dense", "bm25", "hybrid"], "min_score": MIN_SCORES,
                 "max_tokens": [32, 64, 128], "prompt_template": list(TEMPLATES), "demonstrations": [0, 1, 2]}


@dataclass(frozen=True)
class TuneRequest:
    domain: str
    evalset: str
    metric: str
    trials: int
    holdout: str | None = None  # a second set scored at the end; None: the set's own holdout split
    space: dict | None = None  # choices per parameter, replacing DEFAULT_SPACE's (see routes/tunings.py)
    # The key that started it: every trial's evaluation runs for it (EvalService.authorise).
    requested_by: Principal = field(kw_only=True)


def split(items: list[dict]) -> tuple[list[str], list[str]]:
    """(tuning ids, holdout ids): by a hash of each item's id, so an item stays on its side whatever
    else the set holds."""
    tuning, holdout = [], []
    for item in items:
        bucket = int(hashlib.sha256(item["id"].encode()).hexdigest(), 16) % 100
        (tuning if bucket < TUNING_SHARE else holdout).append(item["id"])
    return tuning, holdout


def live_config(route: DomainRoute) -> dict:
    return config_repo.normalised({"retrieval": route.retrieval, "system_prompt": route.system_prompt,
                                   "prompt_template": route.prompt_template,
                                   "demonstrations": list(route.demonstrations), "max_tokens": route.max_tokens})


class TuningService:
    def __init__(self, sessions, swaps: SwapService, evals: EvalService, runner: JobRunner, seed: int = 0):
        self.sessions = sessions
        self.swaps = swaps
        self.evals = evals
        self.runner = runner
        self.job_type = runner.register(JobType(JobKind.TUNE, "tuning"))
        self.seed = seed

    def submit(self, request: TuneRequest) -> str:
        """Check what the request names (403 for a key that may not evaluate, 404 for an unknown domain
        or set), create the job and start it; its id."""
        EvalService.authorise(EvalRequest(request.domain, request.evalset, requested_by=request.requested_by))
        self.swaps.routing.require(request.domain)
        with self.sessions() as session, session.begin():
            items = eval_repo.get_evalset(session, request.evalset).items
            if request.holdout is not None:
                eval_repo.get_evalset(session, request.holdout)
                tuning = [item["id"] for item in items]
            else:
                tuning, _ = split(items)
            if not tuning:
                raise Invalid(f"evaluation set {request.evalset!r} has no item in its tuning split", param="evalset")
            job = Job(id=str(uuid.uuid4()), kind=JobKind.TUNE, status=JobStatus.QUEUED, tenant=tenancy.tenant_of(request.domain),
                      params={"domain": request.domain, "evalset": request.evalset, "metric": request.metric,
                              "trials": request.trials, "holdout": request.holdout, "space": request.space},
                      progress={"stage": "queued", "trials_done": 0, "trials_total": request.trials,
                                "best_score": None})
            session.add(job)
            job_id = job.id
        self.runner.start(job_id, self.job_type, functools.partial(self._run, request))
        return job_id

    async def _run(self, request: TuneRequest, job: JobHandle) -> dict:
        # The domain's adapter now, kept loaded to the end even if the domain is swapped meanwhile.
        async with self.swaps.kept_loaded(request.domain) as engine_model:
            return await _Search(self, job, request, engine_model).run()


class _Search:
    """One tuning's search, from the split to the stored configuration version."""

    def __init__(self, service: TuningService, job: JobHandle, request: TuneRequest, engine_model: str):
        self.service = service
        self.job = job
        self.request = request
        self.engine_model = engine_model
        self.engine_calls = 0
        self.eval_ids: list[str] = []

    async def run(self) -> dict:
        started = time.perf_counter()
        request, service = self.request, self.service
        route = service.swaps.routing.require(request.domain)
        current = live_config(route)
        with service.sessions() as session:
            items = {i["id"]: i for i in eval_repo.get_evalset(session, request.evalset).items}
            if request.holdout is not None:
                tuning_ids = list(items)
                holdout_set, holdout_ids = request.holdout, [
                    i["id"] for i in eval_repo.get_evalset(session, request.holdout).items]
            else:
                tuning_ids, holdout_ids = split(list(items.values()))
                holdout_set = request.evalset
        prompts = list(dict.fromkeys([current["system_prompt"], None, *SYSTEM_PROMPTS]))
        space = {**DEFAULT_SPACE, "system_prompt": prompts, **(request.space or {})}

        self.job.report(stage="baseline")
        baseline = await self._score(current, request.evalset, tuning_ids)
        demos: list[dict] = []
        if max(space["demonstrations"]) > 0:
            right = [i for i in _ordered(tuning_ids) if _right(baseline["items"].get(i), request.metric)
                     and items[i].get("answers")]
            # At least two items are left to score trials on.
            chosen = right[:max(0, min(MAX_DEMONSTRATIONS, max(space["demonstrations"]), len(tuning_ids) - 2))]
            demos = [{"id": i, "question": items[i]["question"], "answer": items[i]["answers"][0]} for i in chosen]
        scored = [i for i in _ordered(tuning_ids) if i not in {d["id"] for d in demos}]
        current_tuning = _mean(baseline["items"], scored)

        sampler = optuna.samplers.TPESampler(seed=service.seed, n_startup_trials=max(1, min(10, request.trials // 2)))
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
        study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
        grid = _grid(space)
        if len(grid) <= request.trials:  # the budget covers the space: every configuration once, seeded order
            random.Random(service.seed).shuffle(grid)
            for params in grid:
                study.enqueue_trial(params)
        sizes = sorted({max(1, math.ceil(share * len(scored))) for share in SUBSETS})
        trials, configs, best = [], {}, None
        seen: dict[str, tuple[str, float | None, int]] = {}  # a configuration tried already: its outcome
        shots = [{"question": d["question"], "answer": d["answer"]} for d in demos]
        self.job.report(stage="search")
        for _ in range(request.trials):
            trial = study.ask()
            config = _sample(trial, space, shots)
            configs[trial.number] = config
            key = json.dumps(config, sort_keys=True)
            repeat = key in seen
            if repeat:  # TPE may propose a configuration again: its score is known, no engine call
                state, value, items_seen = seen[key]
            else:
                state, value, items_seen = await self._trial(trial, config, scored, sizes)
                seen[key] = (state, value, items_seen)
            if state == "pruned":
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, value)
                if best is None or value > best[1]:
                    best = (trial.number, value)
            trials.append({"number": trial.number, "params": trial.params, "score": value, "items": items_seen,
                           "state": state, "repeat": repeat})
            self.job.report(trials_done=len(trials), best_score=best and best[1], engine_calls=self.engine_calls)
        if best is None:
            raise RuntimeError("every trial was pruned")
        # The live configuration competes too: a trial wins only by beating it on the same items.
        if best[1] > current_tuning:
            winner, tuning_score, best_trial = configs[best[0]], best[1], best[0]
        else:
            winner, tuning_score, best_trial = current, current_tuning, None
        self.job.report(stage="holdout")
        holdout_score, current_score = await self._holdout(winner, current, holdout_set, holdout_ids)
        with service.sessions() as session, session.begin():
            domain = adapter_repo.get_domain(session, request.domain)
            version = config_repo.add_version(
                session, domain, winner, metric=request.metric, evalset=request.evalset, holdout=request.holdout,
                tuning_score=tuning_score, holdout_score=holdout_score, current_score=current_score,
                job_id=self.job.id, trials=trials).version
        return {"config_version": version, "tuning_score": tuning_score, "holdout_score": holdout_score,
                "current_score": current_score, "current_tuning_score": current_tuning, "metric": request.metric,
                "improved": best_trial is not None, "best_trial": best_trial, "trials": len(trials),
                "pruned": sum(t["state"] == "pruned" for t in trials), "tuning_items": len(scored),
                "holdout_items": len(holdout_ids), "demonstrations": [d["id"] for d in demos],
                "engine_calls": self.engine_calls, "seconds": round(time.perf_counter() - started, 3)}

    async def _holdout(self, winner: dict, current: dict, evalset: str, ids: list[str]
                       ) -> tuple[float | None, float | None]:
        """(the winner's score, the live configuration's score) on the holdout items."""
        if not ids:
            return None, None
        current_score = _mean((await self._score(current, evalset, ids))["items"], ids)
        if winner == current:
            return current_score, current_score
        return _mean((await self._score(winner, evalset, ids))["items"], ids), current_score

    async def _trial(self, trial: optuna.Trial, config: dict, scored: list[str], sizes: list[int]
                     ) -> tuple[str, float, int]:
        """Score a trial on growing subsets of the tuning items, reporting each to the pruner:
        (state, score on the items seen, items seen)."""
        scores: dict[str, float | None] = {}
        value = 0.0
        for step, size in enumerate(sizes):
            scores.update((await self._score(config, self.request.evalset, scored[len(scores):size]))["items"])
            value = _mean(scores, scored[:size])
            trial.report(value, step + 1)  # rungs at steps 1, 2 (reduction factor 2): each subset but the last
            if size < sizes[-1] and trial.should_prune():
                return "pruned", value, len(scores)
        return "complete", value, len(scores)

    async def _score(self, config: dict, evalset: str, item_ids: list[str]) -> dict:
        """One evaluation run of `config` on those items: {eval_id, items: {item id: score or None}}."""
        if not item_ids:
            return {"eval_id": None, "items": {}}
        run = await self.service.evals.run(EvalRequest(
            self.request.domain, evalset, engine_model=self.engine_model, config=config, item_ids=tuple(item_ids),
            requested_by=self.request.requested_by))
        self.engine_calls += len(item_ids)
        if run["status"] != JobStatus.SUCCEEDED:
            raise RuntimeError(f"evaluation {run['id']} of a trial {run['status']}")
        with self.service.sessions() as session:
            rows = eval_repo.eval_items(session, eval_repo.get_eval(session, run["id"]))
            return {"eval_id": run["id"], "items": {r.item_id: r.scores.get(self.request.metric) for r in rows}}


def _grid(space: dict) -> list[dict]:
    """Every parameter combination of the space, as trial params (min_score per mode where it is)."""
    fixed = {"k": space["k"], "max_tokens": space["max_tokens"], "prompt_template": space["prompt_template"],
             "system_prompt": list(range(len(space["system_prompt"]))), "demonstrations": space["demonstrations"]}
    combos = []
    for mode in space["mode"]:
        thresholds = space["min_score"]
        name, values = (f"min_score_{mode}", thresholds.get(mode) or [None]) if isinstance(thresholds, dict) \
            else ("min_score", thresholds)
        for chosen in itertools.product(values, *fixed.values()):
            combos.append({"mode": mode, name: chosen[0], **dict(zip(fixed, chosen[1:]))})
            if len(combos) > MAX_GRID:
                return combos
    return combos


def _sample(trial: optuna.Trial, space: dict, demos: list[dict]) -> dict:
    """The configuration a trial proposes (config_repo's shape)."""
    mode = trial.suggest_categorical("mode", space["mode"])
    thresholds = space["min_score"]
    if isinstance(thresholds, dict):  # per mode: their scores live on different scales
        min_score = trial.suggest_categorical(f"min_score_{mode}", thresholds.get(mode) or [None])
    else:
        min_score = trial.suggest_categorical("min_score", thresholds)
    prompts = space["system_prompt"]
    prompt = prompts[trial.suggest_categorical("system_prompt", list(range(len(prompts))))]
    shots = trial.suggest_categorical("demonstrations", space["demonstrations"])
    return config_repo.normalised({
        "retrieval": {"k": trial.suggest_categorical("k", space["k"]), "mode": mode, "min_score": min_score},
        "system_prompt": prompt, "prompt_template": trial.suggest_categorical("prompt_template", space["prompt_template"]),
        "demonstrations": demos[:shots], "max_tokens": trial.suggest_categorical("max_tokens", space["max_tokens"])})


def _ordered(ids: list[str]) -> list[str]:
    """A fixed order unrelated to the set's (the growing subsets are a fair sample of it)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"order:{i}".encode()).hexdigest())


def _right(score: float | None, metric: str) -> bool:
    """Whether an item was answered right: full marks (half, for F1)."""
    if score is None:
        return False
    return score >= (0.5 if metric == "answer_f1" else 1.0)


def _mean(scores: dict[str, float | None], ids: list[str]) -> float:
    """The metric's mean over the items that have it (as a run's summary), 0 when none has."""
    values = [scores[i] for i in ids if scores.get(i) is not None]
    return sum(values) / len(values) if values else 0.0
