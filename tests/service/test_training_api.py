"""Training jobs over a fake engine: the examples are in exactly the prompt format the gateway
sends (built by the same code), bad requests are refused before anything runs, and a trained
version carries its provenance. The trainer is the real one, on tiny settings."""

import asyncio
import json
import time

import pytest
from transformers import AutoTokenizer

from adapters_store.db import make_engine, make_session_factory
from adapters_store.models import Job
from evaluation.metrics import ABSTENTION_PHRASE
from service.training_data import RECIPE_DEFAULTS
from tests.fake_engine import serving_handler
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job

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


def question_about(passage: str) -> str:
    """A question about the passage's two longest words, answered by its last two words."""
    words = passage.rstrip(".").split()
    longest = sorted({w for w in words[:-2] if len(w) >= 4 and w.isalpha()}, key=lambda w: (-len(w), w))[:2]
    if len(longest) < 2:
        return "I cannot."  # nothing to parse: this sentence gives no question
    return f"Q: Which words follow {longest[0]} and {longest[1]}?\nA: {' '.join(words[-2:])}"


def base_model_questions(body: dict) -> str:
    """The fake engine as the base model asked for a question (see question_about); other requests
    echo their messages as usual."""
    last = body["messages"][-1]["content"]
    if "Copy a short answer" not in last:
        return json.dumps(body["messages"])
    return question_about(last.split("Passage:\n", 1)[1].split("\n\nCopy a short answer", 1)[0])


async def test_examples_are_the_gateways_own_prompts_and_the_version_has_provenance(
        gateway, fake_engine, base_model_dir):
    fake_engine.script = base_model_questions
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
    asked = [r for r in fake_engine.requests if "Copy a short answer" in str(r.get("messages"))]
    assert len(asked) >= 4 and all(r["n"] == 4 and r["temperature"] > 0 for r in asked), "sampled candidates"
    assert {e["meta"]["origin"] for e in examples} == {"model", "template"}
    for example in examples:
        meta = example["meta"]
        if meta["cited"]:  # the sentence that holds the answer, quoted with its passage, then the answer
            quote, answer = example["completion"].split("\n")
            assert quote.startswith('"') and quote.endswith(f'" [{meta["cited"]}]') and meta["answer"] in quote
            assert answer == f"Answer: {meta['answer']} [{meta['cited']}]."
        else:  # none of the passages holds the answer
            assert meta["passages"] == "distractors" and example["completion"] == ABSTENTION_PHRASE
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
    questions = job["result"]["questions"]["lore"]
    assert provenance["questions"]["lore"] == questions
    assert questions["chunks"] == 4 and questions["writer_calls"] == len(asked)
    assert questions["kept_share"] == {"model": 1.0, "template": 1.0}  # every doc is a definition
    assert 1 <= len(questions["sample"]) <= 5 and all(q.startswith("Which words follow") for q in questions["sample"])
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
        ({"corpus": "lore", "recipe": "reader", "teacher": {"url": "file:///etc/passwd", "model": "m"}}, 400,
         "teacher.url"),
        ({"corpus": "lore", "recipe": "reader", "teacher": {"url": "https://u:p@t.example/v1", "model": "m"}}, 400,
         "teacher.url"),
        ({"corpus": "lore", "recipe": "reader", "teacher": {"url": "https://t.example/v1"}}, 400, "teacher.model"),
    ]:
        response = await gateway.post("/v1/adapters/reader/trainings", json=body)
        assert (response.status_code, response.json()["error"]["param"]) == (status, param), (body, response.text)
    assert (await gateway.get("/v1/adapters/reader/versions")).status_code == 404


async def test_a_teacher_writes_the_questions_and_its_key_is_never_stored(gateway, tmp_path):
    """A teacher (here a tiny OpenAI-compatible server) gets each chunk, its questions are kept
    only when their answers are spans of the chunk, the job reports chunks done with an ETA while
    it writes, and its key appears in no job, version or example."""
    from aiohttp import web

    seen: list[tuple[str, dict]] = []
    release = asyncio.Event()

    async def teacher(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.headers.get("Authorization"), body))
        if len(seen) > 1:
            await release.wait()  # the others wait until the test has seen the progress of the first
        chunk = body["messages"][-1]["content"].split("Passage:\n", 1)[1].split("\n\nWrite", 1)[0]
        content = (question_about(chunk.split(".")[0]) + "\n"
                   "Q: Who painted the Mona Lisa?\nA: Leonardo da Vinci")  # not in the chunk: dropped
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    async with serving_handler(teacher) as url:
        started = await gateway.post("/v1/adapters/taught/trainings", json={
            "corpus": "lore", "recipe": "reader", "rank": 4, "max_examples": 4, "epochs": 1,
            "teacher": {"url": f"{url}/v1", "model": "big-teacher", "key": "sk-teacher-secret"}})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]

        async def writing():
            job = (await gateway.get(f"/v1/jobs/{job_id}")).json()
            progress = job["progress"]
            return progress if progress.get("stage") == "examples" and progress.get("chunks_done") else None

        progress = await wait_for(writing)
        assert (progress["chunks_done"], progress["chunks"]) == (1, 4) and progress["eta_s"] is not None
        release.set()
        job = await wait_job(gateway, job_id, timeout=600)
    assert job["status"] == "succeeded", job
    assert len(seen) == 4 and all(auth == "Bearer sk-teacher-secret" for auth, _ in seen)
    assert all(body["model"] == "big-teacher" for _, body in seen)
    sent = {body["messages"][-1]["content"].split("Passage:\n", 1)[1].split("\n\nWrite", 1)[0] for _, body in seen}
    assert sent == {d["text"] for d in DOCS}, "every chunk reached the teacher"
    examples = [json.loads(line) for line in (await gateway.get(f"/v1/jobs/{job_id}/examples")).text.splitlines()]
    taught = [e["meta"] for e in examples if e["meta"]["origin"] == "teacher"]
    assert len(examples) == 4, "max_examples"
    assert taught and all(m["question"].startswith("Which words follow") for m in taught)
    assert job["result"]["questions"]["lore"]["kept_share"]["teacher"] == 1.0

    # The key is nowhere: not in the job (params, progress, result), the version, the examples, or
    # any file of the gateway's data dir (database, training folder, logs).
    versions = (await gateway.get("/v1/adapters/taught/versions")).json()
    assert "sk-teacher-secret" not in json.dumps(job) + json.dumps(examples) + json.dumps(versions)
    assert versions["data"][0]["provenance"]["params"]["teacher"] == {"url": f"{url}/v1", "model": "big-teacher"}
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert files and not [p for p in files if b"sk-teacher-secret" in p.read_bytes()]


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
