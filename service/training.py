"""Training jobs: a corpus compiled into a new adapter version, scored, and swapped in only
through a gate.

The job builds the examples here (the gateway's retriever and prompt code), then runs the trainer
(`python -m training.run`) in a process of its own, niced and with bounded threads, reading its
progress events. The adapter it writes goes through the same validation and content-addressed
storage as an upload, and the version records its provenance.
"""

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import select

from adapters_store import adapter_repo, tenancy
from adapters_store.artifacts import AdapterArtifactStore
from adapters_store.errors import Conflict
from adapters_store.models import Corpus, Job, JobKind, JobStatus
from adapters_store.validation import BaseModelShapes, validate_adapter
from service.auth import Principal
from service.engine.pool import EnginePool
from service.evals import EvalRequest, EvalService
from service.job_runner import JobHandle, JobRunner, JobType
from service.rag.prompt import PromptBuilder
from service.rag.retrieval import Retriever
from service.settings import Settings
from service.swap import SwapService
from service.questions import TEACHER_QUESTIONS, TEACHER_TOKENS, TEMPERATURE, QuestionWriter, sampling_payload
from service.teacher import Teacher, TeacherClient
from service.training_data import ExampleBuilder, build_examples, corpus_chunks, write_examples
from training.protocol import ALL_PROJECTIONS, TRAINER, TrainConfig, parse_event



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
                 base_shapes: Callable[[], BaseModelShapes], runner: JobRunner):
        self.settings = settings
        self.sessions = sessions
        self.retriever = retriever
        self.prompts = prompts
        self.artifacts = artifacts
        self.swaps = swaps
        self.evals = evals
        self.pool = pool
        self.base_shapes = base_shapes
        self.runner = runner
        self.job_type = runner.register(JobType(JobKind.TRAIN, "training"))

    def folder(self, job_id: str):
        return self.settings.data_dir / "trainings" / job_id

    def submit(self, request: TrainingRequest) -> str:
        with self.sessions() as session, session.begin():
            corpus = session.scalar(select(Corpus).where(Corpus.name == request.corpus))
            job = Job(id=_new_id(), kind=JobKind.TRAIN, corpus_id=corpus.id, status=JobStatus.QUEUED,
                      tenant=tenancy.tenant_of(request.adapter),
                      params={"adapter": request.adapter, **request.params})
            session.add(job)
            job_id = job.id
        self.runner.start(job_id, self.job_type, functools.partial(self._run, request))
        return job_id

    async def _run(self, request: TrainingRequest, job: JobHandle) -> dict:
        try:
            return await self._compile(request, job)
        finally:
            shutil.rmtree(self.folder(job.id) / "adapter", ignore_errors=True)

    async def _compile(self, request: TrainingRequest, job: JobHandle) -> dict:
        folder = self.folder(job.id)
        job.stage("examples")
        examples, data_sha256, generation, questions = await self._examples(job, folder, request)
        if not examples:
            raise ValueError(f"corpus {request.corpus!r} gave no training examples")
        job.stage("training", examples=len(examples))
        curve, final = await self._train(job, folder, request)
        info = await asyncio.to_thread(validate_adapter, folder / "adapter", self.base_shapes(),
                                       self.settings.max_lora_rank, self.settings.lora_target_modules)
        sha256, path = await asyncio.to_thread(self.artifacts.store, request.adapter, folder / "adapter")
        provenance = {"corpus": request.corpus, "generation": generation, "recipe": request.recipe,
                      "params": request.params, "examples": len(examples), "data_sha256": data_sha256,
                      "loss": {"final": final, "curve": curve}, "job_id": job.id,
                      "questions": {request.corpus: questions}}
        with self.sessions() as session, session.begin():
            adapter = adapter_repo.get_or_create_adapter(session, request.adapter)
            version = adapter_repo.add_version(session, adapter, sha256, str(path), info.rank,
                                               list(info.target_modules), provenance=provenance)
            number = version.version
        result: dict = {"adapter": request.adapter, "version": number, "questions": {request.corpus: questions}}
        if request.evalset:
            job.stage("evaluation")
            result["eval_id"] = await self._evaluate(request, number)
            with self.sessions() as session, session.begin():
                version = adapter_repo.get_version(session, request.adapter, number)
                version.provenance = {**version.provenance, "eval_id": result["eval_id"]}
        if request.promote:
            job.stage("promotion")
            result["promotion"] = await self._promote(request, number)
        return result

    async def _examples(self, job: JobHandle, folder,
                        request: TrainingRequest) -> tuple[list[dict], str, int | None, dict]:
        with self.sessions() as session:
            generation = session.scalar(select(Corpus.current_generation).where(Corpus.name == request.corpus))
        chunks = await asyncio.to_thread(corpus_chunks, self.sessions, request.corpus, request.max_examples,
                                         0)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            elapsed = time.monotonic() - started
            job.stage("examples", chunks_done=done, chunks=total,
                      eta_s=round(elapsed / done * (total - done), 1) if done else None)

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

    async def _train(self, job: JobHandle, folder, request: TrainingRequest) -> tuple[list[float], float | None]:
        (folder / "config.json").write_text(json.dumps(trainer_config(self.settings, folder, request).to_dict()))
        done: dict | None = None
        error = None

        def on_event(event: dict) -> None:
            nonlocal done, error
            if event.get("event") == "progress":
                job.stage("training", **{k: event.get(k) for k in (
                    "step", "steps", "epoch", "loss", "tokens_per_s", "eta_s")})
            elif event.get("event") == "done":
                done = event
            elif event.get("event") == "error":
                error = event.get("message")

        if self.settings.trainer == "ray":
            from training import ray_task

            job.stage("waiting for Ray")
            code = await ray_task.train(folder, on_event, address=self.settings.ray_address,
                                        num_cpus=self.settings.training_threads,
                                        num_gpus=self.settings.ray_training_gpus)
        else:
            code = await self._train_here(folder, on_event)
        if code != 0 or done is None:
            raise RuntimeError(f"the trainer exited with code {code}: {error or 'see trainer.log'}")
        return done.get("loss_curve") or [], done.get("final_loss")

    async def _train_here(self, folder, on_event) -> int:
        """The trainer as this gateway's child process, its events read from its stdout."""
        process = await asyncio.create_subprocess_exec(
            *TRAINER, str(folder / "config.json"),
            stdout=asyncio.subprocess.PIPE, stderr=(folder / "trainer.log").open("ab"),
            stdin=asyncio.subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            async for line in process.stdout:
                on_event(parse_event(line))
            return await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 30)
                if process.returncode is None:
                    process.kill()
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
        async with self.swaps.kept_loaded(domain, (request.adapter, version)) as candidate:
            run = await self.evals.run(EvalRequest(domain, request.evalset, engine_model=candidate,
                                                   adapter={"name": request.adapter, "version": version},
                                                   requested_by=request.requested_by))
        return run["id"]

    async def _promote(self, request: TrainingRequest, version: int) -> dict:
        try:
            gate = await self.swaps.swap(request.promote["domain"], request.adapter, version,
                                         request.requested_by, request.promote.get("gate"))
            return {"domain": request.promote["domain"], "promoted": True, "gate": gate}
        except Conflict as exc:
            return {"domain": request.promote["domain"], "promoted": False, "reason": exc.message}


def trainer_config(settings: Settings, folder: Path, request: TrainingRequest) -> TrainConfig:
    """The trainer's config for a run in `folder`, built with the trainer's own type: a wrong key or
    value fails here, in the gateway, not in the trainer's process."""
    return TrainConfig(
        base_model=str(settings.resolved_base_model), examples=str(folder / "examples.jsonl"),
        out_dir=str(folder / "adapter"), rank=request.rank, alpha=2 * request.rank,
        target_modules=list(settings.lora_target_modules or ALL_PROJECTIONS), epochs=request.epochs,
        learning_rate=request.learning_rate, batch_size=settings.training_batch_size,
        max_length=settings.max_model_len, threads=settings.training_threads)


def _new_id() -> str:
    return str(uuid.uuid4())
