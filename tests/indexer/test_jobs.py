"""The ingestion worker tells the gateway when it is busy, once per busy stretch, not per job."""

import asyncio

from indexer.generation import GenerationStore
from indexer.jobs import IngestionWorker, IngestLimits
from indexer.registry import CorpusRegistry


async def test_busy_from_the_first_queued_job_until_the_queue_is_empty(sessions, tmp_path):
    changes: list[bool] = []
    registry = CorpusRegistry(GenerationStore(tmp_path / "indexes"))  # unused: run_job is replaced
    worker = IngestionWorker(sessions, registry, IngestLimits(), on_busy_change=changes.append)
    busy_while_running = []
    worker.run_job = lambda job_id: busy_while_running.append((job_id, list(changes)))
    worker.start()
    try:
        for job_id in ("a", "b"):
            worker.submit(job_id)
        await asyncio.wait_for(worker.wait_idle(), 10)
        assert busy_while_running == [("a", [True]), ("b", [True])]
        assert changes == [True, False]
        worker.submit("c")
        await asyncio.wait_for(worker.wait_idle(), 10)
        assert changes == [True, False, True, False]
    finally:
        await worker.stop()
