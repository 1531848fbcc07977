"""Training jobs: a corpus compiled into a new adapter version, scored, and swapped in only
through a gate.

The job builds the examples here (the gateway's retriever and prompt code), then runs the trainer
(`python -m training.run`) in a process of its own, niced and with bounded threads, reading its
progress events. The adapter it writes goes through the same validation and content-addressed
storage as an upload, and the version records its provenance.
"""

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from adapters_store import adapter_repo, tenancy
from adapters_store.artifacts import AdapterArtifactStore
from adapters_store.errors import Conflict
from adapters_store.models import Corpus, Job, utcnow
from adapters_store.validation import BaseModelShapes, validate_adapter
from service.auth import Principal
from service.engine.pool import EnginePool
from service.evals import EvalRequest, EvalService
from service.rag.prompt import PromptBuilder
from service.rag.retrieval import Retriever
from service.settings import Settings
from service.swap import SwapService
from service.questions import TEACHER_QUESTIONS, TEACHER_TOKENS, TEMPERATURE, QuestionWriter, sampling_payload
from service.teacher import Teacher, TeacherClient
from service.training_data import ExampleBuilder, build_examples, corpus_chunks, write_examples
from training import queue

log = logging.getLogger(__name__)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainingRequest:
    adapter: str
    corpus: str
    recipe: str
    rank: int
    epochs: int
    max_examples: int
    learning_rate: float
    evalset: str | None = None
    promote: dict | None = None  # {domain, gate?}
    teacher: Teacher | None = None  # writes the questions instead of the base model; its key is never stored
    # The key that started it: its evaluation and promotion run for that key (EvalService.authorise).
    requested_by: Principal = field(kw_only=True)
    params: dict = field(default_factory=dict)  # as the client sent them + the recipe's defaults


class TrainingService:
    def __init__(self, settings: Settings, sessions, retriever: Retriever, prompts: PromptBuilder,
                 artifacts: AdapterArtifactStore, swaps: SwapService, evals: EvalService, pool: EnginePool,
                 base_shapes: Callable[[], BaseModelShapes]):
        self.settings = settings
        self.sessions = sessions
        self.retriever = retriever
        self.prompts = prompts
        self.artifacts = artifacts
        self.swaps = swaps
        self.evals = evals
        self.pool = pool
        self.base_shapes = base_shapes
        self._tasks: dict[str, asyncio.Task] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._stopping = False

    def folder(self, job_id: str):
        return self.settings.data_dir / "trainings" / job_id

    def submit(self, request: TrainingRequest) -> str:
        with self.sessions() as session, session.begin():
            corpus = session.scalar(select(Corpus).where(Corpus.name == request.corpus))
            job = Job(id=_new_id(), kind="train", corpus_id=corpus.id, status="queued",
                      tenant=tenancy.tenant_of(request.adapter),
                      params={"adapter": request.adapter, **request.params})
            session.add(job)
            job_id = job.id
        task = asyncio.create_task(self._run_logged(job_id, request), name=f"train-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return job_id

    def cancel(self, job_id: str) -> bool:
        task = self._tasks.get(job_id)
        if task is None:
            return False
        process = self._processes.get(job_id)
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
        task.cancel()
        return True

    async def stop(self) -> None:
        """At shutdown: trainings in progress end as failed (with the reason), not cancelled."""
        self._stopping = True
        for job_id in list(self._tasks):
            self.cancel(job_id)
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def fail_unfinished(self) -> None:
        """At start-up: a training cut short by a restart is marked failed, with the reason."""
        with self.sessions() as session, session.begin():
            for job in session.scalars(select(Job).where(Job.kind == "train",
                                                         Job.status.in_(("queued", "running")))):
                job.status, job.updated_at = "failed", utcnow()
                job.reason = "the gateway restarted during the training; start it again"
                if self.settings.trainer == "queue" and self.folder(job.id).is_dir():
                    queue.request_cancel(self.folder(job.id))  # a worker still running it stops

    async def _run_logged(self, job_id: str, request: TrainingRequest) -> None:
        try:
            result = await self._run(job_id, request)
            self._update(job_id, status="succeeded", result=result)
        except asyncio.CancelledError:
            if self._stopping:
                self._update(job_id, status="failed",
                             reason="the gateway stopped during the training; start it again")
            else:
                self._update(job_id, status="cancelled", reason="cancelled")
            raise
        except Exception as exc:
            log.exception("training %s failed", job_id)
            self._update(job_id, status="failed", reason=f"{getattr(exc, 'message', exc)}")
        finally:
            self._processes.pop(job_id, None)
            shutil.rmtree(self.folder(job_id) / "adapter", ignore_errors=True)

    async def _run(self, job_id: str, request: TrainingRequest) -> dict:
        folder = self.folder(job_id)
        self._update(job_id, status="running", progress={"stage": "examples"})
        examples, data_sha256, generation, questions = await self._examples(job_id, folder, request)
        if not examples:
            raise ValueError(f"corpus {request.corpus!r} gave no training examples")
        self._update(job_id, progress={"stage": "training", "examples": len(examples)})
        curve, final = await self._train(job_id, folder, request)
        info = await asyncio.to_thread(validate_adapter, folder / "adapter", self.base_shapes(),
                                       self.settings.max_lora_rank, self.settings.lora_target_modules)
        sha256, path = await asyncio.to_thread(self.artifacts.store, request.adapter, folder / "adapter")
        provenance = {"corpus": request.corpus, "generation": generation, "recipe": request.recipe,
                      "params": request.params, "examples": len(examples), "data_sha256": data_sha256,
                      "loss": {"final": final, "curve": curve}, "job_id": job_id,
                      "questions": {request.corpus: questions}}
        with self.sessions() as session, session.begin():
            adapter = adapter_repo.get_or_create_adapter(session, request.adapter)
            version = adapter_repo.add_version(session, adapter, sha256, str(path), info.rank,
                                               list(info.target_modules), provenance=provenance)
            number = version.version
        result: dict = {"adapter": request.adapter, "version": number, "questions": {request.corpus: questions}}
        if request.evalset:
            self._update(job_id, progress={"stage": "evaluation"})
            result["eval_id"] = await self._evaluate(request, number)
            with self.sessions() as session, session.begin():
                version = adapter_repo.get_version(session, request.adapter, number)
                version.provenance = {**version.provenance, "eval_id": result["eval_id"]}
        if request.promote:
            self._update(job_id, progress={"stage": "promotion"})
            result["promotion"] = await self._promote(request, number)
        return result

    async def _examples(self, job_id: str, folder,
                        request: TrainingRequest) -> tuple[list[dict], str, int | None, dict]:
        with self.sessions() as session:
            generation = session.scalar(select(Corpus.current_generation).where(Corpus.name == request.corpus))
        chunks = await asyncio.to_thread(corpus_chunks, self.sessions, request.corpus, request.max_examples,
                                         0)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            self._update(job_id, progress={"stage": "examples", "chunks_done": done, "chunks": total,
                                           "eta_s": round(elapsed / done * (total - done), 1) if done else None})

        teacher = TeacherClient(request.teacher, timeout_s=self.settings.engine_request_timeout_s,
                                connect_timeout_s=self.settings.engine_connect_timeout_s) if request.teacher else None
        writer = QuestionWriter(self._teacher_writer(teacher) if teacher else self._ask_base_model,
                                origin="teacher" if teacher else "model",
                                candidates=self.settings.question_candidates,
                                concurrency=self.settings.question_concurrency,
                                keep=TEACHER_QUESTIONS if teacher else 1)
        try:
            pairs, stats = await writer.questions(chunks, request.max_examples, progress)
        finally:
            if teacher is not None:
                await teacher.aclose()
        system_prompt = None
        if request.promote:
            route = self.swaps.routing.get(request.promote["domain"])
            system_prompt = route.system_prompt if route else None
        builder = ExampleBuilder(self.prompts, self.retriever, request.corpus, system_prompt=system_prompt)
        examples = await asyncio.to_thread(build_examples, request.recipe, builder, pairs, chunks)
        data_sha256 = await asyncio.to_thread(write_examples, folder / "examples.jsonl", examples)
        return examples, data_sha256, generation, stats.report()

    async def _train(self, job_id: str, folder, request: TrainingRequest) -> tuple[list[float], float | None]:
        config = {"base_model": self.settings.resolved_base_model, "examples": str(folder / "examples.jsonl"),
                  "out_dir": str(folder / "adapter"), "rank": request.rank, "alpha": 2 * request.rank,
                  "target_modules": list(self.settings.lora_target_modules or TARGET_MODULES),
                  "epochs": request.epochs, "learning_rate": request.learning_rate,
                  "batch_size": self.settings.training_batch_size, "max_length": self.settings.max_model_len,
                  "threads": self.settings.training_threads, "seed": 0, "precision": "auto",
                  "checkpoint_dir": None, "resume": False}
        (folder / "config.json").write_text(json.dumps(config))
        done: dict | None = None
        error = None

        def on_event(event: dict) -> None:
            nonlocal done, error
            if event.get("event") == "progress":
                self._update(job_id, progress={"stage": "training", **{k: event.get(k) for k in (
                    "step", "steps", "epoch", "loss", "tokens_per_s", "eta_s")}})
            elif event.get("event") == "done":
                done = event
            elif event.get("event") == "error":
                error = event.get("message")

        if self.settings.trainer == "queue":
            code = await self._train_by_worker(job_id, folder, on_event)
        elif self.settings.trainer == "ray":
            from training import ray_task

            self._update(job_id, progress={"stage": "waiting for Ray"})
            code = await ray_task.train(folder, on_event, address=self.settings.ray_address,
                                        num_cpus=self.settings.training_threads,
                                        num_gpus=self.settings.ray_training_gpus)
        else:
            code = await self._train_here(job_id, folder, on_event)
        if code != 0 or done is None:
            raise RuntimeError(f"the trainer exited with code {code}: {error or 'see trainer.log'}")
        return done.get("loss_curve") or [], done.get("final_loss")

    async def _train_here(self, job_id: str, folder, on_event) -> int:
        """The trainer as this gateway's child process, its events read from its stdout."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "training.run", str(folder / "config.json"),
            stdout=asyncio.subprocess.PIPE, stderr=(folder / "trainer.log").open("ab"),
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self._processes[job_id] = process
        try:
            async for line in process.stdout:
                on_event(queue.parse_event(line))
            return await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 30)
                if process.returncode is None:
                    process.kill()
            raise

    async def _train_by_worker(self, job_id: str, folder, on_event) -> int:
        """The run handed to a `graft trainer` worker through the shared folder (training/queue.py)."""
        self._update(job_id, progress={"stage": "waiting for a trainer"})
        queue.enqueue(folder)
        try:
            return await queue.follow(folder, on_event, stale_after_s=self.settings.trainer_stale_after_s)
        except asyncio.CancelledError:
            queue.request_cancel(folder)
            raise

    async def _ask_base_model(self, messages: list[dict], n: int) -> list[str]:
        """`n` sampled answers of the base model, through the same engines as traffic (one request)."""
        payload = sampling_payload(self.settings.base_model_name, messages, n)
        async with self.pool.lease(self.settings.base_model_name) as engine:
            answer = await engine.client.complete("/v1/chat/completions", payload)
        return [(c.get("message") or {}).get("content") or "" for c in answer["choices"]]

    @staticmethod
    def _teacher_writer(teacher: TeacherClient):
        async def write(messages: list[dict], n: int) -> list[str]:
            return await teacher.chat(messages, n, temperature=TEMPERATURE, max_tokens=TEACHER_TOKENS)
        return write

    async def _evaluate(self, request: TrainingRequest, version: int) -> str:
        domain = (request.promote or {}).get("domain")
        if domain is None:
            raise ValueError("an evaluation needs a domain: give `promote.domain`")
        candidate = await self.swaps.stage(request.adapter, version)
        try:
            run = await self.evals.run(EvalRequest(domain, request.evalset, engine_model=candidate,
                                                   adapter={"name": request.adapter, "version": version},
                                                   requested_by=request.requested_by))
        finally:
            self.swaps.release(candidate)
        return run["id"]

    async def _promote(self, request: TrainingRequest, version: int) -> dict:
        try:
            gate = await self.swaps.swap(request.promote["domain"], request.adapter, version,
                                         request.requested_by, request.promote.get("gate"))
            return {"domain": request.promote["domain"], "promoted": True, "gate": gate}
        except Conflict as exc:
            return {"domain": request.promote["domain"], "promoted": False, "reason": exc.message}

    def _update(self, job_id: str, *, status: str | None = None, progress: dict | None = None,
                result: dict | None = None, reason: str | None = None) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if status is not None:
                job.status = status
            if progress is not None:
                job.progress = progress
            if result is not None:
                job.result = result
            if reason is not None:
                job.reason = reason
            job.updated_at = utcnow()


def _new_id() -> str:
    return str(uuid.uuid4())
