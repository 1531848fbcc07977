"""The one runner of the gateway's background jobs (evaluations, trainings, tunings).

It owns what every kind of job shares: the registry of running tasks, starting, cancelling, stopping
at shutdown, failing at start-up the jobs a restart cut short, and every status change of a job row.
A kind supplies only its body: an async function given a `JobHandle` (the job's id and its progress
reporter) that returns the job's result; and, in its `JobType`, what its own rows do when a job ends.

Statuses: `running` when the body starts; `succeeded` with the body's result; `cancelled` when
cancelled; `failed` with the reason when the body raises, when the gateway stops during it, and (at
start-up) when a restart cut it short.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapters_store.models import UNFINISHED_STATUSES, Job, JobKind, JobStatus, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobType:
    kind: JobKind
    noun: str  # in the reasons a job fails with: "the gateway stopped during the {noun}"
    # In the transaction that ends a job (however it ends, and at start-up for one a restart cut
    # short), with the job's final status set: the kind's own rows follow it.
    on_end: Callable[[Session, Job], None] | None = None


class JobHandle:
    """What a job's body is given: its id, and its progress (a JSON object on the job row)."""

    def __init__(self, runner: "JobRunner", job_id: str):
        self.runner = runner
        self.id = job_id

    def stage(self, stage: str, **fields) -> None:
        """A new stage: the progress becomes `{"stage": stage, **fields}`."""
        self.runner.update(self.id, progress={"stage": stage, **fields}, merge=False)

    def report(self, **fields) -> None:
        """Progress within the stage: these fields change, the others stay."""
        self.runner.update(self.id, progress=fields)


Body = Callable[[JobHandle], Awaitable[dict | None]]


class JobRunner:
    def __init__(self, sessions):
        self.sessions = sessions
        self._types: dict[JobKind, JobType] = {}
        self._tasks: dict[str, asyncio.Task] = {}  # job id → its running task
        self._stopping = False

    def register(self, job_type: JobType) -> JobType:
        self._types[job_type.kind] = job_type
        return job_type

    def start(self, job_id: str, job_type: JobType, body: Body,
              holding: contextlib.AsyncExitStack | None = None) -> None:
        """Run `body` in the background. `holding`: what the job keeps from its request to its end
        (a version kept loaded); its callbacks move to the job, which closes them when it ends."""
        held = holding.pop_all() if holding is not None else contextlib.AsyncExitStack()
        task = asyncio.create_task(self._held(held, job_id, job_type, body), name=f"{job_type.kind}-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job_id, None))

    async def run(self, job_id: str, job_type: JobType, body: Body) -> None:
        """Run `body` here, to its end (a gate waits for its evaluation); not cancellable on its own."""
        await self._run(job_id, job_type, body)

    def cancel(self, job_id: str) -> bool:
        """False when no task of this gateway runs the job."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def stop(self) -> None:
        """At shutdown: jobs in progress end as failed (with the reason), not cancelled."""
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def fail_unfinished(self) -> None:
        """At start-up: every job of a registered kind that a restart cut short is marked failed."""
        with self.sessions() as session, session.begin():
            for job in session.scalars(select(Job).where(Job.kind.in_(list(self._types)),
                                                         Job.status.in_(list(UNFINISHED_STATUSES)))):
                job_type = self._types[JobKind(job.kind)]
                self._end(session, job, job_type, JobStatus.FAILED,
                          reason=f"the gateway restarted during the {job_type.noun}; start it again")

    def update(self, job_id: str, *, status: JobStatus | None = None, progress: dict | None = None,
               merge: bool = True, result: dict | None = None, reason: str | None = None) -> None:
        with self.sessions() as session, session.begin():
            job = session.get(Job, job_id)
            if status is not None:
                job.status = status
            if progress is not None:
                job.progress = {**(job.progress or {}), **progress} if merge else progress
            if result is not None:
                job.result = result
            if reason is not None:
                job.reason = reason
            job.updated_at = utcnow()

    async def _held(self, held: contextlib.AsyncExitStack, job_id: str, job_type: JobType, body: Body) -> None:
        async with held:
            await self._run(job_id, job_type, body)

    async def _run(self, job_id: str, job_type: JobType, body: Body) -> None:
        try:
            self.update(job_id, status=JobStatus.RUNNING)
            result = await body(JobHandle(self, job_id))
            self._finish(job_id, job_type, JobStatus.SUCCEEDED, result=result)
        except asyncio.CancelledError:
            if self._stopping:
                self._finish(job_id, job_type, JobStatus.FAILED,
                             reason=f"the gateway stopped during the {job_type.noun}; start it again")
            else:
                self._finish(job_id, job_type, JobStatus.CANCELLED, reason="cancelled")
            raise
        except Exception as exc:
            log.exception("%s %s failed", job_type.noun, job_id)
            self._finish(job_id, job_type, JobStatus.FAILED,
                         reason=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")

    def _finish(self, job_id: str, job_type: JobType, status: JobStatus, *, result: dict | None = None,
                reason: str | None = None) -> None:
        with self.sessions() as session, session.begin():
            self._end(session, session.get(Job, job_id), job_type, status, result=result, reason=reason)

    @staticmethod
    def _end(session: Session, job: Job, job_type: JobType, status: JobStatus, *, result: dict | None = None,
             reason: str | None = None) -> None:
        job.status, job.updated_at = status, utcnow()
        if result is not None:
            job.result = result
        if reason is not None:
            job.reason = reason
        if job_type.on_end is not None:
            job_type.on_end(session, job)
