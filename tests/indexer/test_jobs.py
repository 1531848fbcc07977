"""The ingestion worker runs queued jobs one at a time, in order, and survives a job that crashes."""

import asyncio

from indexer.generation import GenerationStore
from indexer.jobs import IngestionWorker, IngestLimits
from indexer.registry import CorpusRegistry


async def test_jobs_run_in_order_and_a_crash_does_not_stop_the_worker(sessions, tmp_path):
    registry = CorpusRegistry(GenerationStore(tmp_path / "indexes"))  # unused: run_job is replaced
    worker = IngestionWorker(sessions, registry, IngestLimits())
    ran: list[str] = []

    def run_job(job_id: str) -> None:
        ran.append(job_id)
        if job_id == "b":
            raise RuntimeError("boom")

    worker.run_job = run_job
    worker.start()
    try:
        for job_id in ("a", "b", "c"):
            worker.submit(job_id)
        await asyncio.wait_for(worker.wait_idle(), 30)
        assert ran == ["a", "b", "c"]
        worker.submit("d")
        await asyncio.wait_for(worker.wait_idle(), 30)
        assert ran[-1] == "d"
    finally:
        await worker.stop()
