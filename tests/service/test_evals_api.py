"""Evaluation sets, runs and gated swaps over a fake engine whose answers the test scripts; the
retrieval, embedder and database are real. Every metric is checked against a hand computation."""

import asyncio
import json
import threading

import pytest

from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

DOCS = [
    {"id": "zorblax", "text": "The Zorblax Institute was founded in 1847 by Elira Vantress."},
    {"id": "weather", "text": "Quenmoor has mild winters and foggy summers."},
    {"id": "river", "text": "The Velt river flows through Quenmoor down to the grey sea."},
]
ITEMS = [
    {"id": "founder", "question": "Who founded the Zorblax Institute?", "answers": ["Elira Vantress"],
     "document_ids": ["zorblax"]},
    {"id": "winters", "question": "What are the winters like in Quenmoor?", "answers": ["mild"],
     "document_ids": ["weather", "ghost"]},
    {"id": "river", "question": "Which river flows to the grey sea?", "answers": ["the Velt"],
     "document_ids": ["zorblax"]},
    {"id": "colour", "question": "What colour is the sky?", "answers": ["blue"]},
]
# What the engine answers, by question (a word of it) and by the adapter that answers.
GOOD = {"Zorblax": "It was founded by  ELIRA Vantress [1].", "winters": "Mild [1], and foggy [2].",
        "river": "The Velt.", "sky": "I do not know [3]."}
BAD = {"Zorblax": "Nobody.", "winters": "Hot.", "river": "None.", "sky": "Green."}


def scripted(body: dict) -> str:
    answers = BAD if body["model"] == "tone@2" else GOOD
    question = body["messages"][-1]["content"]
    return next(text for word, text in answers.items() if word in question)


@pytest.fixture
async def served(make_settings, fake_engine, good_lora):
    """(client, the gateway's state): domain `lore` on tone@1 over corpus `lore`, evaluation set `lore-qa`."""
    fake_engine.script = scripted
    settings = make_settings(engine_urls=[fake_engine.url])
    apps = []
    async with running_gateway(settings, wrap=lambda app: apps.append(app) or app) as url:
        async with client(url) as http:
            await http.post("/v1/corpora", json={"name": "lore"})
            job = (await http.post("/v1/corpora/lore/documents", json={"documents": DOCS})).json()
            assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
            for _ in range(2):
                assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
            put = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "adapter": {"name": "tone", "version": 1},
                                                           "retrieval": {"k": 3, "mode": "hybrid"}})
            assert put.status_code == 201, put.text
            created = await http.post("/v1/evalsets", json={"name": "lore-qa", "items": ITEMS})
            assert created.status_code == 201, created.text
            yield http, apps[0].state.graft


@pytest.fixture
def gateway(served):
    return served[0]


async def finished(http, job_id: str) -> dict:
    job = await wait_job(http, job_id)
    assert job["status"] == "succeeded", job
    return job


async def test_every_metric_matches_a_hand_computation(gateway):
    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa", "max_tokens": 16})
    assert started.status_code == 202, started.text
    job = await finished(gateway, started.json()["job_id"])
    eval_id = job["result"]["eval_id"]
    run = (await gateway.get(f"/v1/evals/{eval_id}")).json()
    assert (run["domain"], run["evalset"], run["adapter"], run["status"], run["k"], run["items"]) == (
        "lore", "lore-qa", "tone@1", "succeeded", 3, 4)
    items = {i["id"]: i for i in (await gateway.get(f"/v1/evals/{eval_id}/items")).json()["items"]}
    # Three documents, k = 3: every item retrieves all three; the ranks decide MRR.
    ranks = {i: items[i]["retrieved_document_ids"] for i in items}
    assert ranks["founder"][0] == "zorblax" and ranks["winters"][0] == "weather" and ranks["river"][0] == "river"
    assert all(sorted(r) == ["river", "weather", "zorblax"] for r in ranks.values())
    zorblax_rank_for_river = ranks["river"].index("zorblax") + 1

    founder, winters, river, colour = (items[i] for i in ("founder", "winters", "river", "colour"))
    # The answer metrics normalise as SQuAD does after dropping citation markers (lowercase, no
    # punctuation, no a/an/the, one space).
    # founder: relevant zorblax at rank 1. Output -> "it was founded by elira vantress", 6 tokens,
    # 2 of them the answer's 2: precision 2/6, recall 1, F1 = 2 * (1/3) / (1/3 + 1) = 1/2
    assert (founder["hit"], founder["mrr_at_k"], founder["recall_at_k"]) == (1.0, 1.0, 1.0)
    assert (founder["answer_contains"], founder["exact_match"]) == (1.0, 0.0)
    assert founder["answer_f1"] == pytest.approx(1 / 2)
    assert founder["cited_document_ids"] == ["zorblax"] and founder["citation_precision"] == 1.0
    # winters: relevant {weather, ghost}, weather at rank 1: recall 1/2; cites [1]=weather, [2]=the rank-2 doc
    assert (winters["hit"], winters["mrr_at_k"], winters["recall_at_k"]) == (1.0, 1.0, 0.5)
    assert winters["cited_document_ids"] == ranks["winters"][:2]
    assert winters["citation_precision"] == 0.5  # one of two cited documents is relevant
    # -> "mild and foggy" holds "mild": precision 1/3, recall 1, F1 = 2 * (1/3) / (4/3) = 1/2
    assert (winters["answer_contains"], winters["exact_match"]) == (1.0, 0.0)
    assert winters["answer_f1"] == pytest.approx(1 / 2)
    # river: relevant zorblax is not first; "The Velt." and "the Velt" both normalise to "velt"
    assert river["mrr_at_k"] == pytest.approx(1 / zorblax_rank_for_river) and river["hit"] == 1.0
    assert (river["answer_contains"], river["answer_f1"], river["exact_match"]) == (1.0, 1.0, 1.0)
    assert river["cited_document_ids"] == [] and river["citation_precision"] is None
    # colour: no document ids, so no retrieval metric and no citation precision (though it cites [3])
    assert (colour["hit"], colour["mrr_at_k"], colour["recall_at_k"], colour["citation_precision"]) == (
        None, None, None, None)
    assert colour["cited_document_ids"] == ranks["colour"][2:]
    assert (colour["answer_contains"], colour["answer_f1"]) == (0.0, 0.0)
    assert all(items[i]["abstention"] is None for i in items)  # every item is answerable

    metrics = run["metrics"]
    assert metrics["hit_at_k"] == 1.0
    assert metrics["mrr_at_k"] == pytest.approx((1 + 1 + 1 / zorblax_rank_for_river) / 3)
    assert metrics["recall_at_k"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["answer_contains"] == pytest.approx(3 / 4)
    assert metrics["answer_f1"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 0) / 4)
    assert metrics["exact_match"] == pytest.approx(1 / 4)
    assert metrics["citation_precision"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["abstention"] is None
    assert metrics["latency_p50_ms"] > 0 and metrics["latency_p99_ms"] >= metrics["latency_p50_ms"]


async def test_questions_take_the_completion_path_at_temperature_zero(gateway, fake_engine):
    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa",
                                                    "retrieval": {"k": 1, "mode": "bm25"}})
    await finished(gateway, started.json()["job_id"])
    asked = [r for r in fake_engine.requests if r.get("messages") and "Zorblax" in r["messages"][-1]["content"]]
    assert asked and asked[-1]["temperature"] == 0 and asked[-1]["model"] == "tone@1"
    assert "[1]" in asked[-1]["messages"][0]["content"] and "[2]" not in asked[-1]["messages"][0]["content"]
    off = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa", "retrieval": False})
    run_id = (await finished(gateway, off.json()["job_id"]))["result"]["eval_id"]
    metrics = (await gateway.get(f"/v1/evals/{run_id}")).json()["metrics"]
    assert metrics["hit_at_k"] is None and metrics["answer_contains"] is not None


async def test_a_candidate_is_evaluated_without_being_routed(gateway, fake_engine):
    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa",
                                                    "adapter": {"name": "tone", "version": 2}})
    run_id = (await finished(gateway, started.json()["job_id"]))["result"]["eval_id"]
    run = (await gateway.get(f"/v1/evals/{run_id}")).json()
    assert run["adapter"] == "tone@2" and run["metrics"]["answer_contains"] == 0.0
    assert (await gateway.get("/v1/domains/lore")).json()["engine_model"] == "tone@1"
    for _ in range(200):  # the candidate is unloaded once the run is over
        if "tone@2" not in fake_engine.loaded:
            break
        await asyncio.sleep(0.05)
    assert fake_engine.loaded == {"tone@1"}


async def test_an_evaluation_scores_one_version_to_its_end_across_a_swap(served, fake_engine):
    """The domain is swapped to tone@2 while its evaluation on tone@1 runs: the drain leaves tone@1
    loaded for the evaluation's later questions (they had found no engine holding it: 503), every
    question is answered by tone@1, and tone@1 is unloaded once the evaluation ends."""
    gateway, state = served
    state.evals.concurrency = 1  # one question at a time: none in flight between two of them
    fake_engine.hold_completions = asyncio.Event()
    planning, resume = threading.Event(), threading.Event()
    plan_domain = state.planner._plan_domain

    def held_plan(*args, **kwargs):  # the second question waits here, on a worker thread
        if sum(1 for r in fake_engine.requests if r.get("model") == "tone@1" and r.get("messages")) >= 1:
            planning.set()
            assert resume.wait(timeout=120), "the test never let the plan go on"
        return plan_domain(*args, **kwargs)

    state.planner._plan_domain = held_plan
    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa"})
    assert started.status_code == 202, started.text
    try:
        await until(lambda: any(r.get("model") == "tone@1" and r.get("messages") for r in fake_engine.requests),
                    "the first question to reach the engine")
        swapped = await gateway.post("/v1/domains/lore/adapter", json={"adapter": "tone", "version": 2})
        assert swapped.status_code == 200, swapped.text
        fake_engine.hold_completions.set()
        await until(planning.is_set, "the second question to be planned")
        # No question is in flight now: the drain of tone@1 has decided, and it kept tone@1.
        await asyncio.wait_for(state.swaps.wait_drained(), 120)
        assert "tone@1" in fake_engine.loaded
    finally:
        resume.set()
    job = await finished(gateway, started.json()["job_id"])
    run = (await gateway.get(f"/v1/evals/{job['result']['eval_id']}")).json()
    assert run["adapter"] == "tone@1" and run["metrics"]["answer_contains"] == 0.75, run
    # released at the end: the swap's drain unloads it now
    await until(lambda: "tone@1" not in fake_engine.loaded, "tone@1 to be unloaded")
    assert fake_engine.loaded == {"tone@2"}


async def test_an_engine_restarted_during_a_candidate_evaluation_gets_the_candidate_back_first(served, fake_engine):
    """The engine restarts empty between two questions of an evaluation of candidate tone@2, which
    no domain routes to: it is ready again only once tone@2 is back (the reconciler loads the
    versions kept loaded for runs, not only the routed ones), and the evaluation finishes on tone@2."""
    gateway, state = served
    state.evals.concurrency = 1  # one question at a time: none in flight while the engine is down
    planning, resume = threading.Event(), threading.Event()
    plan_domain = state.planner._plan_domain

    def held_plan(*args, **kwargs):  # the second question waits here, on a worker thread
        if any(r.get("model") == "tone@2" and r.get("messages") for r in fake_engine.requests):
            planning.set()
            assert resume.wait(timeout=120), "the test never let the plan go on"
        return plan_domain(*args, **kwargs)

    state.planner._plan_domain = held_plan
    engine = state.pool.engines[0]
    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa",
                                                    "adapter": {"name": "tone", "version": 2}})
    assert started.status_code == 202, started.text
    try:
        await until(planning.is_set, "the second question to be planned")
        fake_engine.healthy = False  # the engine dies ...
        await until(lambda: not engine.ready, "the gateway to notice the engine is down")
        fake_engine.loaded.clear()  # ... and restarts empty
        restarted_at = len(fake_engine.events)
        fake_engine.healthy = True
        await until(lambda: engine.ready, "the engine to be ready again")
        assert fake_engine.loaded == {"tone@1", "tone@2"}, "the engine took traffic before the candidate was back"
    finally:
        resume.set()
    job = await finished(gateway, started.json()["job_id"])
    run = (await gateway.get(f"/v1/evals/{job['result']['eval_id']}")).json()
    assert run["adapter"] == "tone@2" and run["metrics"]["answer_contains"] == 0.0, run
    after = fake_engine.events[restarted_at:]
    asked = [e for e in after if e == ("answer", "tone@2")]
    assert len(asked) >= 3 and after.index(("load", "tone@2")) < after.index(("answer", "tone@2")), after


async def test_a_gate_refuses_a_worse_version_and_lets_a_good_one_flip(gateway, fake_engine):
    gate = {"evalset": "lore-qa", "metric": "answer_contains", "min_delta": 0.0}
    refused = await gateway.post("/v1/domains/lore/adapter", json={"adapter": "tone", "version": 2, "gate": gate})
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "gate_failed" and "0.000" in error["message"] and "0.750" in error["message"]
    assert (await gateway.get("/v1/domains/lore")).json()["engine_model"] == "tone@1"
    answer = await gateway.post("/v1/chat/completions", json={"model": "lore", "messages": [
        {"role": "user", "content": "Who founded the Zorblax Institute?"}]})
    assert answer.json()["adapter"] == "tone@1"

    fake_engine.script = lambda body: scripted({**body, "model": "tone@1"})  # now version 2 answers well too
    await gateway.put("/v1/domains/lore", json={"corpora": ["lore"], "adapter": {"name": "tone", "version": 1},
                                               "retrieval": {"k": 3}, "gate": gate})  # the domain's default gate
    flipped = await gateway.post("/v1/domains/lore/adapter", json={"adapter": "tone", "version": 2})
    assert flipped.status_code == 200, flipped.text
    assert flipped.json()["engine_model"] == "tone@2" and flipped.json()["gate_result"]["passed"] is True
    history = (await gateway.get("/v1/domains/lore/history")).json()["data"]
    refused_row, swap_row = history[1], history[-1]
    assert refused_row["action"] == "swap_refused" and refused_row["details"]["gate"]["candidate"] == 0.0
    assert refused_row["details"]["gate"]["current"] == 0.75 and refused_row["to"] == "tone@1"
    assert swap_row["action"] == "swap" and swap_row["details"]["gate"]["candidate"] == 0.75
    # a gate naming an unknown set or metric is refused before anything is loaded
    assert (await gateway.post("/v1/domains/lore/adapter", json={
        "adapter": "tone", "version": 1, "gate": {**gate, "evalset": "ghost"}})).status_code == 404
    assert (await gateway.post("/v1/domains/lore/adapter", json={
        "adapter": "tone", "version": 1, "gate": {**gate, "metric": "vibes"}})).status_code == 400


async def test_evalsets_are_immutable_listed_and_uploaded_as_jsonl(gateway):
    again = await gateway.post("/v1/evalsets", json={"name": "lore-qa", "items": ITEMS[:1]})
    assert again.status_code == 409 and again.json()["error"]["code"] == "evalset_exists"
    listed = (await gateway.get("/v1/evalsets")).json()["data"]
    assert [(s["name"], s["items"]) for s in listed] == [("lore-qa", 4)] and len(listed[0]["sha256"]) == 64
    shown = (await gateway.get("/v1/evalsets/lore-qa")).json()
    assert [i["id"] for i in shown["data"]] == ["founder", "winters", "river", "colour"]
    jsonl = b'{"question": "a?", "answers": ["x"]}\n\n{"question": "b?"}\n'
    uploaded = await gateway.post("/v1/evalsets?name=small", files=[("files", ("small.jsonl", jsonl, "application/jsonl"))])
    assert uploaded.status_code == 201 and uploaded.json()["items"] == 2, uploaded.text
    assert [i["id"] for i in (await gateway.get("/v1/evalsets/small")).json()["data"]] == ["1", "2"]
    for bad in ({"name": "x", "items": []}, {"name": "x", "items": [{"answers": ["no question"]}]},
                {"name": "x", "items": [{"id": "a", "question": "q"}, {"id": "a", "question": "r"}]}):
        assert (await gateway.post("/v1/evalsets", json=bad)).status_code == 400
    broken = await gateway.post("/v1/evalsets", files=[("files", ("b.jsonl", b'{"question": "a?"}\n{nope', "text/plain"))])
    assert broken.status_code == 400 and "line 2" in broken.json()["error"]["message"]
    assert (await gateway.delete("/v1/evalsets/small")).status_code == 200
    assert (await gateway.get("/v1/evalsets/small")).status_code == 404
    assert (await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "small"})).status_code == 404
    assert (await gateway.post("/v1/evals", json={"domain": "ghost", "evalset": "lore-qa"})).status_code == 404


# Two unanswerable questions (nothing in DOCS says) beside an answerable one.
ABSTAIN_ITEMS = [
    {"id": "founder", "question": "Who founded the Zorblax Institute?", "answers": ["Elira Vantress"],
     "document_ids": ["zorblax"]},
    {"id": "moons", "question": "How many moons does Quenmoor have?", "unanswerable": True},
    {"id": "anthem", "question": "What is the anthem of the Velt river?", "unanswerable": True},
]
# By question: version 1 abstains on "moons" (case and punctuation apart from the phrase) and
# answers "anthem" anyway; version 2 never abstains.
ABSTAINING = {"Zorblax": "Elira Vantress [1].", "moons": "the passages do NOT contain the answer",
              "anthem": "The Velt river has no anthem [3]."}
GUESSING = {"Zorblax": "Elira Vantress [1].", "moons": "Quenmoor has two moons.",
            "anthem": "The Velt river has no anthem [3]."}


async def test_unanswerable_items_are_scored_by_abstention(gateway, fake_engine):
    fake_engine.script = lambda body: next(
        text for word, text in (GUESSING if body["model"] == "tone@2" else ABSTAINING).items()
        if word in body["messages"][-1]["content"])
    jsonl = "\n".join(json.dumps(item) for item in ABSTAIN_ITEMS).encode()
    created = await gateway.post("/v1/evalsets?name=abstain",
                                 files=[("files", ("abstain.jsonl", jsonl, "application/jsonl"))])
    assert created.status_code == 201, created.text
    stored = (await gateway.get("/v1/evalsets/abstain")).json()["data"]
    assert [i.get("unanswerable") for i in stored] == [None, True, True]  # kept only where true
    both = await gateway.post("/v1/evalsets", json={"name": "bad", "items": [
        {"question": "q?", "answers": ["x"], "unanswerable": True}]})
    assert both.status_code == 400 and "unanswerable" in both.json()["error"]["message"], both.text

    started = await gateway.post("/v1/evals", json={"domain": "lore", "evalset": "abstain"})
    eval_id = (await finished(gateway, started.json()["job_id"]))["result"]["eval_id"]
    items = {i["id"]: i for i in (await gateway.get(f"/v1/evals/{eval_id}/items")).json()["items"]}
    assert items["moons"]["abstention"] == 1.0 and items["anthem"]["abstention"] == 0.0
    for unanswerable in (items["moons"], items["anthem"]):
        assert (unanswerable["answer_contains"], unanswerable["answer_f1"], unanswerable["exact_match"]) == (
            None, None, None)
    founder = items["founder"]
    assert founder["abstention"] is None
    assert (founder["answer_contains"], founder["answer_f1"], founder["exact_match"]) == (1.0, 1.0, 1.0)
    metrics = (await gateway.get(f"/v1/evals/{eval_id}")).json()["metrics"]
    assert metrics["abstention"] == 0.5  # (1 + 0) / 2 unanswerable items
    assert (metrics["answer_contains"], metrics["exact_match"]) == (1.0, 1.0)  # the one answerable item
    assert metrics["items"] == 3

    # `abstention` gates a swap: version 2 never abstains (0.0 against 0.5), so it is refused
    gate = {"evalset": "abstain", "metric": "abstention", "min_delta": 0.0}
    refused = await gateway.post("/v1/domains/lore/adapter", json={"adapter": "tone", "version": 2, "gate": gate})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "gate_failed" and "0.500" in refused.json()["error"]["message"]
