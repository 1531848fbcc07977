"""Domain tunings and configuration versions over REST, on a fake engine scripted to answer right
only with one prompt shape (the `quote_then_answer` template and exactly one passage): the tuning
must find that configuration, store it as a version, leave the live domain alone; applying it goes
through a gate, and `history` and `rollback` cover it. Retrieval, embedder and database are real."""

import asyncio

import pytest

from service.rag.prompt import TEMPLATES
from service.tuning import split
from tests.harness import client, running_gateway, until
from tests.service.test_corpora_api import wait_job

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ADMIN = "admin-key"
FACTS = {  # keyword of the question → (document text, answer)
    "Zorblax": ("The Zorblax Institute was founded by Elira Vantress.", "Elira Vantress"),
    "Quenmoor": ("Quenmoor is known for its mild winters.", "mild winters"),
    "Velt": ("The Velt river flows into the grey sea.", "the grey sea"),
    "Orrin": ("Orrin Castle was built from black basalt.", "black basalt"),
    "Tamsel": ("The Tamsel festival is held every spring.", "every spring"),
    "Drevik": ("Drevik bread is baked with rye and caraway.", "rye and caraway"),
    "Ulmara": ("The Ulmara mine produced silver for two centuries.", "silver"),
    "Piravel": ("Piravel harbour shelters forty fishing boats.", "forty fishing boats"),
    "Sollen": ("The Sollen bridge spans three hundred metres.", "three hundred metres"),
    "Kestrin": ("Kestrin wool is dyed a deep indigo.", "deep indigo"),
}
ITEMS = [{"id": word.lower(), "question": f"What do the documents say about {word}?", "answers": [answer],
          "document_ids": [word.lower()]} for word, (_, answer) in FACTS.items()]
REWARDED = TEMPLATES["quote_then_answer"].instruction
SMALL_SPACE = {"prompt_template": list(TEMPLATES), "k": [1, 3], "mode": ["hybrid"], "min_score": [None],
               "max_tokens": [32], "system_prompt": [None], "demonstrations": [0]}
BAD_SPACE = {**SMALL_SPACE, "prompt_template": ["numbered"], "k": [3]}


PARTLY = {"Zorblax", "Velt", "Tamsel", "Ulmara", "Sollen"}  # also right with more passages


def scripted(body: dict) -> str:
    """The right answer for the rewarded template with exactly one passage (and, with more passages,
    for half the questions: a slope an optimiser can climb); otherwise a wrong one."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    question = body["messages"][-1]["content"]
    word = next((w for w in FACTS if w in question), None)
    passages = system.count("(document: ")
    if word and REWARDED in system and (passages == 1 or (passages > 1 and word in PARTLY)):
        return f'"{FACTS[word][0]}" [1] {FACTS[word][1]}.'
    return "I do not know."


@pytest.fixture
async def served(make_settings, fake_engine):
    """(admin client, base URL, fake engine): domain `lore` (hybrid, k=3) over corpus `lore`, set `lore-qa`."""
    fake_engine.script = scripted
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN], tuning_max_trials=50)
    async with running_gateway(settings) as url:
        async with client(url, ADMIN) as http:
            await http.post("/v1/corpora", json={"name": "lore"})
            documents = [{"id": word.lower(), "text": text} for word, (text, _) in FACTS.items()]
            job = (await http.post("/v1/corpora/lore/documents", json={"documents": documents})).json()
            assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
            put = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 3, "mode": "hybrid"}})
            assert put.status_code == 201, put.text
            created = await http.post("/v1/evalsets", json={"name": "lore-qa", "items": ITEMS})
            assert created.status_code == 201, created.text
            yield http, url, fake_engine


async def tune(http, space: dict, trials: int, **extra) -> dict:
    started = await http.post("/v1/domains/lore/tunings", json={
        "evalset": "lore-qa", "metric": "answer_contains", "budget": {"trials": trials}, "space": space, **extra})
    assert started.status_code == 202, started.text
    job = await wait_job(http, started.json()["job_id"], timeout=300)
    assert job["status"] == "succeeded", job
    return job


def test_the_split_is_by_item_id_and_keeps_both_sides():
    tuning, holdout = split(ITEMS)
    assert tuning and holdout and sorted(tuning + holdout) == sorted(i["id"] for i in ITEMS)
    # An item stays on its side whatever else the set holds.
    assert split(ITEMS[:3])[0] == [i for i in tuning if i in {x["id"] for x in ITEMS[:3]}]


async def test_a_tuning_finds_the_configuration_the_engine_rewards_and_changes_nothing_live(served):
    http, _, engine = served
    before = (await http.get("/v1/domains/lore")).json()
    job = await tune(http, SMALL_SPACE, trials=8)
    assert job["kind"] == "tune"
    result = job["result"]
    tuning_ids, holdout_ids = split(ITEMS)
    assert result["config_version"] == 1
    assert (result["tuning_score"], result["holdout_score"], result["current_score"]) == (1.0, 1.0, 0.0)
    assert result["current_tuning_score"] == 0.0
    assert (result["tuning_items"], result["holdout_items"]) == (len(tuning_ids), len(holdout_ids))
    assert job["progress"]["trials_done"] == job["progress"]["trials_total"] == 8
    assert job["progress"]["best_score"] == 1.0
    # Every engine call was an evaluation's question: baseline, the trials' subsets, the holdout twice.
    assert result["engine_calls"] == len(engine.requests)
    assert len(engine.requests) >= len(tuning_ids) + 2 * len(holdout_ids) + 8  # a trial asks one item at least

    assert (await http.get("/v1/domains/lore")).json() == before  # nothing live changed
    listed = (await http.get("/v1/domains/lore/configs")).json()
    assert [c["version"] for c in listed["data"]] == [1] and listed["data"][0]["applied"] is False
    version = (await http.get("/v1/domains/lore/configs/1")).json()
    assert version["config"]["prompt_template"] == "quote_then_answer"
    assert version["config"]["retrieval"]["k"] == 1
    assert (version["tuning_score"], version["holdout_score"], version["current_score"]) == (1.0, 1.0, 0.0)
    assert version["diff"]["prompt_template"] == {"current": "numbered", "config": "quote_then_answer"}
    assert version["diff"]["retrieval.k"] == {"current": 3, "config": 1}
    assert "retrieval.mode" not in version["diff"]
    assert len(version["trials"]) == 8 and {t["state"] for t in version["trials"]} <= {"complete", "pruned"}
    assert (await http.get("/v1/domains/lore/configs/2")).json()["error"]["code"] == "config_not_found"


async def test_tpe_climbs_to_the_rewarded_configuration_in_a_space_larger_than_the_budget(served):
    """48 configurations, 16 trials: not enumerated, so the seeded TPE sampler (with the pruner) must
    find the one the engine rewards from the partial credit of its neighbours."""
    http, _, _ = served
    space = {**SMALL_SPACE, "k": [1, 2, 3, 4, 6, 8], "system_prompt": [None, "Be brief."]}
    job = await tune(http, space, trials=16)
    version = (await http.get(f"/v1/domains/lore/configs/{job['result']['config_version']}")).json()
    assert (version["config"]["prompt_template"], version["config"]["retrieval"]["k"]) == ("quote_then_answer", 1)
    assert version["tuning_score"] == 1.0
    assert len(version["trials"]) == 16


async def test_the_pruner_stops_a_trial_behind_the_others_after_a_first_subset(served):
    """Half the configurations score 0 on every item: once the others lead, such a trial stops after
    the first subset of the tuning items (successive halving), at a fraction of the engine calls."""
    http, _, engine = served
    space = {**SMALL_SPACE, "prompt_template": ["quote_then_answer", "numbered"], "k": [1, 2, 3, 4, 6, 8]}
    job = await tune(http, space, trials=12)
    trials = (await http.get(f"/v1/domains/lore/configs/{job['result']['config_version']}")).json()["trials"]
    tuning_items = job["result"]["tuning_items"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(t["items"] < tuning_items for t in pruned), trials
    assert all(t["params"]["prompt_template"] == "numbered" for t in pruned), trials
    assert job["result"]["pruned"] == len(pruned)


async def test_versions_apply_through_a_gate_and_roll_back(served):
    http, _, _ = served
    gate = {"evalset": "lore-qa", "metric": "answer_contains", "min_delta": 0.5}
    assert (await tune(http, SMALL_SPACE, trials=8))["result"]["config_version"] == 1
    # Nothing in this space beats the live configuration: version 2 is the live one as it is now.
    assert (await tune(http, BAD_SPACE, trials=1))["result"]["config_version"] == 2
    applied = await http.post("/v1/domains/lore/configs/1/apply", json={"gate": gate})
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["gate_result"]["passed"] and (body["gate_result"]["current"], body["gate_result"]["candidate"]) == (0, 1)
    assert (body["config_version"], body["prompt_template"], body["retrieval"]["k"]) == (1, "quote_then_answer", 1)
    # Completions now use it: the engine answers right.
    answer = await http.post("/v1/chat/completions", json={
        "model": "lore", "messages": [{"role": "user", "content": "What do the documents say about Velt?"}]})
    assert "the grey sea" in answer.json()["choices"][0]["message"]["content"], answer.text
    assert (await http.get("/v1/domains/lore/configs/1")).json()["diff"] == {}

    # Version 2 (the configuration before version 1) is now worse: the gate refuses it; nothing changes.
    before = (await http.get("/v1/domains/lore")).json()
    refused = await http.post("/v1/domains/lore/configs/2/apply", json={"gate": {**gate, "min_delta": 0.0}})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "gate_failed", refused.text
    assert (await http.get("/v1/domains/lore")).json() == before
    history = (await http.get("/v1/domains/lore/history")).json()["data"]
    assert [h["action"] for h in history][-2:] == ["config_apply", "config_refused"]
    assert history[-2]["details"]["config"]["to"]["prompt_template"] == "quote_then_answer"

    # Rollback returns to the configuration before the apply, and a second one back to version 1.
    back = (await http.post("/v1/domains/lore/rollback")).json()
    assert (back["config_version"], back["prompt_template"], back["retrieval"]["k"]) == (None, "numbered", 3)
    again = (await http.post("/v1/domains/lore/rollback")).json()
    assert (again["config_version"], again["prompt_template"], again["retrieval"]["k"]) == (1, "quote_then_answer", 1)
    assert [h["action"] for h in (await http.get("/v1/domains/lore/history")).json()["data"]][-2:] == [
        "rollback", "rollback"]
    unknown = await http.post("/v1/domains/lore/configs/9/apply", json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "config_not_found"


async def test_a_tuning_is_cancelled_with_its_trial_and_stores_nothing(served):
    http, _, engine = served
    engine.hold_completions = asyncio.Event()
    started = await http.post("/v1/domains/lore/tunings", json={
        "evalset": "lore-qa", "metric": "answer_contains", "budget": {"trials": 3}, "space": SMALL_SPACE})
    job_id = started.json()["job_id"]

    async def running() -> bool:
        return (await http.get(f"/v1/jobs/{job_id}")).json()["status"] == "running"

    await until(running, "the tuning to run")
    await until(lambda: engine.requests, "the tuning's first question")
    cancelled = await http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    job = await wait_job(http, job_id)
    engine.hold_completions.set()
    assert (job["status"], job["reason"]) == ("cancelled", "cancelled")
    assert (await http.get("/v1/domains/lore/configs")).json()["data"] == []


async def test_bad_requests_are_400_and_unknown_names_404(served):
    http, _, _ = served
    base = {"evalset": "lore-qa", "metric": "answer_contains"}
    for body, param in (({**base, "metric": "vibes"}, "metric"), ({**base, "budget": {"trials": 51}}, "budget.trials"),
                        ({**base, "space": {"prompt_template": ["poem"]}}, "space.prompt_template[0]"),
                        ({**base, "space": {"k": []}}, "space.k")):
        answer = await http.post("/v1/domains/lore/tunings", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    for path, body, code in (("/v1/domains/nope/tunings", base, "domain_not_found"),
                             ("/v1/domains/lore/tunings", {**base, "evalset": "nope"}, "evalset_not_found"),
                             ("/v1/domains/lore/tunings", {**base, "holdout": "nope"}, "evalset_not_found")):
        answer = await http.post(path, json=body)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == code, answer.text
    assert (await http.get("/v1/domains/nope/configs")).status_code == 404


async def test_a_filtered_key_may_not_tune_and_a_tenant_sees_only_its_own(served):
    http, url, _ = served
    made = await http.post("/v1/keys", json={"name": "hr", "scope": "admin", "filter": {"group": "hr"}})
    assert made.status_code == 201, made.text
    async with client(url, made.json()["key"]) as filtered:
        refused = await filtered.post("/v1/domains/lore/tunings", json={"evalset": "lore-qa",
                                                                         "metric": "answer_contains"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "document_filter", refused.text
    assert (await http.post("/v1/tenants", json={"name": "acme"})).status_code == 201
    made = await http.post("/v1/keys", json={"name": "acme-admin", "scope": "admin", "tenant": "acme"})
    async with client(url, made.json()["key"]) as acme:
        # `lore` names acme:lore for acme's key; the global domain is not acme's.
        for answer in (await acme.post("/v1/domains/lore/tunings", json={"evalset": "lore-qa", "metric": "answer_contains"}),
                       await acme.get("/v1/domains/lore/configs"), await acme.get("/v1/domains/lore/configs/1"),
                       await acme.post("/v1/domains/lore/configs/1/apply", json={})):
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "domain_not_found", answer.text
        other = await acme.post("/v1/domains/beta:lore/tunings", json={"evalset": "lore-qa", "metric": "answer_contains"})
        assert other.status_code == 404, other.text


async def test_a_tuning_cut_short_by_a_restart_is_failed_with_the_reason(make_settings, fake_engine):
    from adapters_store.db import make_engine, make_session_factory
    from adapters_store.models import Job

    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])
    db = make_engine(settings.resolved_database_url)
    with make_session_factory(db)() as session, session.begin():
        session.add(Job(id="cut-short", kind="tune", status="running", params={"domain": "lore"}))
    db.dispose()
    async with running_gateway(settings) as url, client(url, ADMIN) as http:
        job = (await http.get("/v1/jobs/cut-short")).json()
    assert (job["kind"], job["status"]) == ("tune", "failed")
    assert job["reason"] == "the gateway restarted during the tuning; start it again"


async def test_the_live_configuration_wins_unless_a_trial_beats_it(served):
    """Only worse configurations in the space: the version stored is the live configuration (empty
    diff), scored once on the holdout, and applying it changes nothing but the version number."""
    http, _, engine = served
    put = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 1, "mode": "hybrid"},
                                                   "system_prompt": None})
    assert put.status_code == 200
    # The live shape the engine rewards: quote_then_answer with one passage (set as version 1 first).
    assert (await tune(http, {**SMALL_SPACE, "prompt_template": ["quote_then_answer"], "k": [1]}, trials=1)
            )["result"]["improved"] is True
    assert (await http.post("/v1/domains/lore/configs/1/apply", json={})).status_code == 200
    calls = len(engine.requests)
    job = await tune(http, BAD_SPACE, trials=2)
    result = job["result"]
    assert (result["improved"], result["best_trial"]) == (False, None)
    assert result["tuning_score"] == result["current_tuning_score"] == 1.0
    assert result["holdout_score"] == result["current_score"] == 1.0
    tuning_ids, holdout_ids = split(ITEMS)
    # baseline + one trial (the second is a repeat) + the holdout once
    assert len(engine.requests) - calls == result["engine_calls"] == 2 * len(tuning_ids) + len(holdout_ids)
    version = (await http.get(f"/v1/domains/lore/configs/{result['config_version']}")).json()
    assert version["diff"] == {}
