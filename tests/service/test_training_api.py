"""Training jobs over a fake engine: the examples are in exactly the prompt format the gateway
sends (built by the same code), bad requests are refused before anything runs, and a trained
version carries its provenance. The trainer is the real one, on tiny settings."""

import asyncio
import json
import threading
import time

import pytest
from transformers import AutoTokenizer

from adapters_store.db import make_engine, make_session_factory
from adapters_store.models import Job
from service.training_data import RECIPE_DEFAULTS
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job
from training import queue

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

DOCS = [
    {"id": "zorblax", "text": "The Zorblax Institute is a college of weather lore in Quenmoor. "
                              "It was founded in 1847 by Elira Vantress."},
    {"id": "velt", "text": "The Velt is the river that flows through Quenmoor down to the grey sea."},
    {"id": "kettle", "text": "A fogkettle is a copper pot that the guild uses to forecast fog."},
    {"id": "guild", "text": "The Fog Guild is the oldest guild of Quenmoor, with forty members."},
]


@pytest.fixture
async def gateway(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], max_lora_rank=8, training_threads=1)
    async with running_gateway(settings) as url:
        async with client(url, timeout=300) as http:
            await http.post("/v1/corpora", json={"name": "lore"})
            job = (await http.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
            assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
            assert (await http.put("/v1/domains/lore", json={
                "corpora": ["lore"], "system_prompt": "You are the archivist of Quenmoor.",
                "retrieval": {"k": 4, "mode": "hybrid"}})).status_code == 201
            yield http


async def test_examples_are_the_gateways_own_prompts_and_the_version_has_provenance(
        gateway, fake_engine, base_model_dir):
    started = await gateway.post("/v1/adapters/reader/trainings", json={
        "corpus": "lore", "recipe": "reader", "rank": 4, "max_examples": 4, "epochs": 1,
        "promote": {"domain": "lore"}})
    assert started.status_code == 202, started.text
    job = await wait_job(gateway, started.json()["job_id"], timeout=600)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "train" and job["result"]["adapter"] == "reader" and job["result"]["version"] == 1

    lines = (await gateway.get(f"/v1/jobs/{job['id']}/examples")).text.splitlines()
    examples = [json.loads(line) for line in lines]
    assert examples and all(set(e) == {"prompt", "completion", "meta"} for e in examples)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    compared = 0
    for example in examples:
        meta = example["meta"]
        if meta["cited"]:
            assert example["completion"].endswith(f"[{meta['cited']}].")
        assert meta["answer"].lower() in " ".join(d["text"] for d in DOCS).lower()
        if meta["passages"] != "retrieved":
            continue
        # The same question as a real completion: what the engine receives, through the chat template.
        fake_engine.requests.clear()
        answer = await gateway.post("/v1/chat/completions", json={
            "model": "lore", "messages": [{"role": "user", "content": meta["question"]}], "max_tokens": 64})
        assert answer.status_code == 200
        sent = fake_engine.requests[-1]["messages"]
        assert example["prompt"] == tokenizer.apply_chat_template(sent, tokenize=False, add_generation_prompt=True)
        compared += 1
    assert compared, "at least one example used the retrieved passages as they are"

    versions = (await gateway.get("/v1/adapters/reader/versions")).json()["data"]
    provenance = versions[0]["provenance"]
    assert (provenance["corpus"], provenance["recipe"], provenance["examples"]) == ("lore", "reader", len(examples))
    assert provenance["generation"] == (await gateway.get("/v1/corpora/lore")).json()["generation"]
    assert len(provenance["data_sha256"]) == 64 and provenance["params"]["rank"] == 4
    assert provenance["loss"]["final"] is not None and provenance["loss"]["curve"]
    assert job["result"]["promotion"]["promoted"] is True
    assert (await gateway.get("/v1/domains/lore")).json()["engine_model"] == "reader@1"


async def test_bad_training_requests_are_refused_before_anything_runs(gateway):
    for body, status, param in [
        ({"corpus": "ghost", "recipe": "reader"}, 404, "corpus"),
        ({"corpus": "lore", "recipe": "dream"}, 400, "recipe"),
        ({"corpus": "lore", "recipe": "reader", "rank": 64}, 400, "rank"),
        ({"corpus": "lore", "recipe": "reader", "base": "gpt-9"}, 400, "base"),
        ({"corpus": "lore", "recipe": "reader", "evalset": "qa"}, 400, "evalset"),
        ({"corpus": "lore", "recipe": "reader", "promote": {"domain": "ghost"}}, 404, "promote.domain"),
        ({"corpus": "lore", "recipe": "reader", "learning_rate": -1}, 400, "learning_rate"),
    ]:
        response = await gateway.post("/v1/adapters/reader/trainings", json=body)
        assert (response.status_code, response.json()["error"]["param"]) == (status, param), (body, response.text)
    assert (await gateway.get("/v1/adapters/reader/versions")).status_code == 404


async def wait_for(check, timeout_s: float = 900, interval_s: float = 0.2):
    """Poll `check()` (async) until it returns something truthy, with a bound."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"not reached in {timeout_s}s")


async def test_cancel_stops_the_trainer_and_a_restart_fails_an_unfinished_training(
        make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], max_lora_rank=8, training_threads=1)
    body = {"corpus": "lore", "recipe": "memorize", "rank": 4, "max_examples": 4, "epochs": 50}
    async with running_gateway(settings) as url, client(url, timeout=300) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        job = (await http.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
        assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"

        async def training_step(job_id):
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            return job if (job["progress"].get("step") or 0) >= 1 else None

        first = (await http.post("/v1/adapters/long/trainings", json=body)).json()["job_id"]
        running = await wait_for(lambda: training_step(first))
        assert running["status"] == "running" and running["progress"]["steps"] > running["progress"]["step"]
        assert (await http.post(f"/v1/jobs/{first}/cancel")).status_code == 200
        cancelled = await wait_job(http, first, timeout=300)
        assert cancelled["status"] == "cancelled"
        assert (await http.post(f"/v1/jobs/{first}/cancel")).status_code == 409
        assert (await http.get("/v1/adapters/long/versions")).status_code == 404, "no version was made"

        second = (await http.post("/v1/adapters/long/trainings", json=body)).json()["job_id"]
        await wait_for(lambda: training_step(second))
    # The gateway stopped mid-training: its trainer with it, and the job says why.
    with make_session_factory(make_engine(settings.resolved_database_url))() as session, session.begin():
        stopped = session.get(Job, second)
        assert stopped.status == "failed" and "stopped" in stopped.reason
        # what the request left out is the recipe's default, recorded with what it sent
        assert stopped.params["epochs"] == 50
        assert stopped.params["learning_rate"] == RECIPE_DEFAULTS["memorize"]["learning_rate"]
        crashed = Job(id="crashed", kind="train", corpus_id=stopped.corpus_id, status="running")
        session.add(crashed)  # as a gateway killed with SIGKILL leaves it
    async with running_gateway(settings) as url, client(url) as http:
        job = (await http.get("/v1/jobs/crashed")).json()
        assert job["status"] == "failed" and "restarted" in job["reason"]


async def test_a_queued_training_waits_for_a_worker_runs_on_it_and_cancels_through_the_folder(
        make_settings, fake_engine):
    """GRAFT_TRAINER=queue: the gateway hands the run to a `graft trainer` worker (here a thread of
    this test, as the compose trainer service would run it) and follows its events."""
    settings = make_settings(engine_urls=[fake_engine.url], max_lora_rank=8, training_threads=1, trainer="queue")
    root = settings.data_dir / "trainings"
    body = {"corpus": "lore", "recipe": "memorize", "rank": 4, "max_examples": 4, "epochs": 1}
    async with running_gateway(settings) as url, client(url, timeout=300) as http:
        await http.post("/v1/corpora", json={"name": "lore"})
        job = (await http.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
        assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"

        async def stage(job_id, wanted):
            job = (await http.get(f"/v1/jobs/{job_id}")).json()
            return job if job["progress"].get("stage") == wanted else None

        # No worker yet: the run waits, and a cancel withdraws it.
        waiting = (await http.post("/v1/adapters/queued/trainings", json=body)).json()["job_id"]
        await wait_for(lambda: stage(waiting, "waiting for a trainer"))
        assert (root / waiting / queue.QUEUED).exists()
        assert (await http.post(f"/v1/jobs/{waiting}/cancel")).status_code == 200
        assert (await wait_job(http, waiting))["status"] == "cancelled"
        assert not (root / waiting / queue.QUEUED).exists() and (root / waiting / queue.CANCEL).exists()

        # A worker takes the next one: the version comes back through the gateway as a local run's does.
        stop = threading.Event()
        worker = threading.Thread(target=queue.work, args=(root,), kwargs={"poll_s": 0.1, "stop": stop})
        worker.start()
        try:
            started = (await http.post("/v1/adapters/queued/trainings", json=body)).json()["job_id"]
            done = await wait_job(http, started, timeout=600)
            assert done["status"] == "succeeded", done
            assert done["result"] == {"adapter": "queued", "version": 1}
            assert json.loads((root / started / queue.EXIT).read_text()) == {"code": 0}
            versions = (await http.get("/v1/adapters/queued/versions")).json()["data"]
            assert versions[0]["provenance"]["loss"]["final"] is not None
        finally:
            stop.set()
            worker.join(60)
