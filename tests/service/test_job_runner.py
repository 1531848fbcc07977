"""The job runner's contract (service/job_runner.py) on real databases: how each way a job ends
reaches its row, what a kind's hooks see, and that what a job holds is let go however it ends.
Evaluations, trainings and tunings run on it: their API tests cover the same paths end to end."""

import asyncio
import contextlib

import pytest

from adapters_store.db import make_engine, make_session_factory
from adapters_store.models import Job, JobKind, JobStatus
from service.job_runner import JobRunner, JobType
from tests.harness import until

pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture
def sessions(make_settings):
    db = make_engine(make_settings().resolved_database_url)
    yield make_session_factory(db)
    db.dispose()


def add_job(sessions, job_id: str, status: JobStatus = JobStatus.QUEUED) -> None:
    with sessions() as session, session.begin():
        session.add(Job(id=job_id, kind=JobKind.TUNE, status=status, params={}))


def row(sessions, job_id: str) -> Job:
    with sessions() as session:
        return session.get(Job, job_id)


async def test_each_end_reaches_the_row_and_the_kind_hook_sees_it(sessions):
    ended: list[tuple[str, str]] = []
    runner = JobRunner(sessions)
    kind = runner.register(JobType(JobKind.TUNE, "tuning", on_end=lambda _, job: ended.append((job.id, job.status))))
    gate = asyncio.Event()

    async def succeeds(job):
        job.stage("search", trials_done=0)
        job.report(trials_done=1)
        return {"answer": 42}

    async def fails(_):
        raise ValueError("no good")

    async def waits(_):
        await gate.wait()

    for job_id, body in (("ok", succeeds), ("bad", fails), ("cancelled", waits), ("stopped", waits)):
        add_job(sessions, job_id)
        runner.start(job_id, kind, body)
    await until(lambda: row(sessions, "bad").status == JobStatus.FAILED, "the failing job to end")
    await until(lambda: row(sessions, "cancelled").status == JobStatus.RUNNING, "the waiting job to run")
    assert runner.cancel("cancelled") and not runner.cancel("no-such-job")
    await until(lambda: row(sessions, "cancelled").status == JobStatus.CANCELLED, "the cancel to land")
    await runner.stop()

    ok, bad, cancelled, stopped = (row(sessions, j) for j in ("ok", "bad", "cancelled", "stopped"))
    assert (ok.status, ok.result, ok.progress) == (JobStatus.SUCCEEDED, {"answer": 42},
                                                   {"stage": "search", "trials_done": 1})
    assert (bad.status, bad.reason) == (JobStatus.FAILED, "ValueError: no good")
    assert (cancelled.status, cancelled.reason) == (JobStatus.CANCELLED, "cancelled")
    assert (stopped.status, stopped.reason) == (JobStatus.FAILED,
                                                "the gateway stopped during the tuning; start it again")
    assert sorted(ended) == [("bad", "failed"), ("cancelled", "cancelled"), ("ok", "succeeded"),
                             ("stopped", "failed")]


async def test_what_a_job_holds_is_let_go_however_it_ends(sessions):
    runner = JobRunner(sessions)
    kind = runner.register(JobType(JobKind.TUNE, "tuning"))
    released: list[str] = []

    async def fails(_):
        raise RuntimeError("boom")

    for job_id, body in (("ok", lambda _: asyncio.sleep(0)), ("bad", fails)):
        add_job(sessions, job_id)
        async with contextlib.AsyncExitStack() as holding:
            holding.callback(released.append, job_id)
            runner.start(job_id, kind, body, holding)
        assert job_id not in released  # moved to the job: the route's block let go of nothing
    await until(lambda: sorted(released) == ["bad", "ok"], "both jobs to let go of what they held")


async def test_start_up_fails_the_jobs_a_restart_cut_short(sessions):
    add_job(sessions, "queued")
    add_job(sessions, "running", JobStatus.RUNNING)
    add_job(sessions, "done", JobStatus.SUCCEEDED)
    runner = JobRunner(sessions)
    runner.register(JobType(JobKind.TUNE, "tuning"))
    runner.fail_unfinished()
    for job_id in ("queued", "running"):
        job = row(sessions, job_id)
        assert (job.status, job.reason) == (JobStatus.FAILED, "the gateway restarted during the tuning; start it again")
    assert row(sessions, "done").status == JobStatus.SUCCEEDED
