"""GRAFT_TRAINER=ray: a training runs as a Ray task on the session's local cluster (nothing shared with the
gateway but Ray): its progress reaches the job, its adapter comes back into a version with its
provenance, and a cancel stops it."""

import pytest

from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job
from tests.service.test_training_api import DOCS, wait_for

pytestmark = pytest.mark.ray


async def test_a_training_runs_as_a_ray_task_reports_progress_and_cancels(make_settings, fake_engine, ray_cluster):
    settings = make_settings(engine_urls=[fake_engine.url], max_lora_rank=8, training_threads=1, trainer="ray",
                             ray_address=ray_cluster.address)
    body = {"corpus": "lore", "recipe": "memorize", "rank": 4, "max_examples": 4, "epochs": 1}
    async with running_gateway(settings) as url, client(url, timeout=300) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        job = (await http.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
        assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"

        async def progress(job_id):
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            return job if (job["progress"].get("step") or 0) >= 1 else None

        # A long one: its steps reach the job while it runs on Ray; a cancel stops it.
        long = (await http.post("/v1/adapters/long/trainings", json={**body, "epochs": 50})).json()["job_id"]
        running = await wait_for(lambda: progress(long), timeout_s=300)
        assert running["status"] == "running" and running["progress"]["steps"] > running["progress"]["step"]
        assert (await http.post(f"/v1/jobs/{long}/cancel")).status_code == 200
        assert (await wait_job(http, long, timeout=300))["status"] == "cancelled"
        assert (await http.get("/v1/adapters/long/versions")).status_code == 404, "no version was made"

        started = (await http.post("/v1/adapters/onray/trainings", json=body)).json()["job_id"]
        done = await wait_job(http, started, timeout=600)
        assert done["status"] == "succeeded", done
        assert (done["result"]["adapter"], done["result"]["version"]) == ("onray", 1)
        versions = (await http.get("/v1/adapters/onray/versions")).json()["data"]
        assert versions[0]["provenance"]["loss"]["final"] is not None
