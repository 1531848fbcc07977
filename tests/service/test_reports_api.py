"""Domain reports over REST on a fake engine scripted per route: the base model answers half the
questions with passages and none closed book, the rewarded prompt template (a tuning finds it) all
of them, the `reader` and `memorize` adapters all of them, the composed adapter as the base model.
The table must hold every route, each an ordinary evaluation run on the same items, with intervals
computed from the runs' per-item scores; rows without an ingredient are listed, not dropped.
Retrieval, embedder and database are real."""

import asyncio

import pytest
from sqlalchemy import select

from adapters_store.db import make_engine, make_session_factory
from adapters_store.models import Adapter, AdapterVersion, Job
from evaluation.compare import paired_bootstrap
from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job
from tests.service.test_tunings_api import FACTS, ITEMS, PARTLY, REWARDED, SMALL_SPACE, tune

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ADMIN = "admin-key"
ROUTES = ["closed_book", "retrieval", "tuned", "reader", "memorize_closed_book", "memorize_retrieval", "composed"]


def scripted(body: dict) -> str:
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    word = next((w for w in FACTS if w in body["messages"][-1]["content"]), None)
    passages = "(document: " in system
    model = body["model"].split("@")[0]
    right = (model == "memo" or (passages and (model == "reader" or REWARDED in system or word in PARTLY)))
    return f"{FACTS[word][1]}." if word and right else "I do not know."


async def _wait(http, job_id: str) -> dict:
    job = await wait_job(http, job_id, timeout=300)
    assert job["status"] == "succeeded", job
    return job


async def report(http, domain: str = "lore", **body) -> dict:
    started = await http.post(f"/v1/domains/{domain}/reports", json={"evalset": "lore-qa", **body})
    assert started.status_code == 202, started.text
    return await _wait(http, started.json()["job_id"])


async def lore(http) -> None:
    """Corpus `lore` (the facts), domain `lore` over it (hybrid, k=3), set `lore-qa`."""
    assert (await http.post("/v1/corpora", json={"name": "lore"})).status_code == 201
    documents = [{"id": word.lower(), "text": text} for word, (text, _) in FACTS.items()]
    job = (await http.post("/v1/corpora/lore/documents", json={"documents": documents})).json()
    assert (await wait_job(http, job["job_id"]))["status"] == "succeeded"
    put = await http.put("/v1/domains/lore", json={"corpora": ["lore"], "retrieval": {"k": 3, "mode": "hybrid"}})
    assert put.status_code == 201, put.text
    assert (await http.post("/v1/evalsets", json={"name": "lore-qa", "items": ITEMS})).status_code == 201


@pytest.fixture
async def served(make_settings, fake_engine, good_lora):
    """(admin client, base URL, fake engine, settings) with `lore` set up and adapter `tone@1` uploaded."""
    fake_engine.script = scripted
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])
    async with running_gateway(settings) as url, client(url, ADMIN) as http:
        await lore(http)
        assert (await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        yield http, url, fake_engine, settings


def record_training(settings, adapter: str, version: int, corpus: str, recipe: str) -> None:
    """As a training records its provenance (service/training.py), for a version uploaded here."""
    db = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(db)() as session, session.begin():
            row = session.scalar(select(AdapterVersion).join(Adapter).where(Adapter.name == adapter,
                                                                            AdapterVersion.version == version))
            row.provenance = {"corpus": corpus, "recipe": recipe, "job_id": "a-training"}
    finally:
        db.dispose()


async def test_a_report_has_every_route_each_an_evaluation_with_its_interval_against_retrieval(served, good_lora):
    http, _, engine, settings = served
    await tune(http, {**SMALL_SPACE, "prompt_template": ["quote_then_answer"], "k": [3]}, trials=1)
    for name, version, recipe in (("reader", 1, "reader"), ("memo", 1, "memorize"), ("reader", 2, "reader")):
        assert (await http.post(f"/v1/adapters/{name}/versions", files=adapter_files(good_lora))).status_code == 201
        record_training(settings, name, version, "lore", recipe)
    composed = await http.post("/v1/adapters/mix/versions", json={"compose": {"method": "cat", "sources": [
        {"adapter": "reader", "version": 1, "weight": 1.0}, {"adapter": "memo", "version": 1, "weight": 1.0}]}})
    assert composed.status_code == 201, composed.text
    before = (await http.get("/v1/domains/lore")).json()
    calls = len(engine.requests)

    job = await report(http)
    assert job["kind"] == "report"
    result = job["result"]
    rows = {row["route"]: row for row in result["rows"]}
    assert [row["route"] for row in result["rows"]] == ROUTES
    assert (result["reference"], result["evalset"]) == ("retrieval", "lore-qa")
    assert all(row["available"] and row["status"] == "succeeded" for row in rows.values()), rows
    assert {r: rows[r]["metrics"]["answer_contains"] for r in ROUTES} == {
        "closed_book": 0.0, "retrieval": 0.5, "tuned": 1.0, "reader": 1.0, "memorize_closed_book": 1.0,
        "memorize_retrieval": 1.0, "composed": 0.5}
    # What fed each row, found from the domain's records.
    assert (rows["tuned"]["config_version"], rows["tuned"]["source"]) == (1, "provenance")
    # The newest reader version (2); the composed one's source is version 1.
    assert rows["reader"]["adapter"] == {"name": "reader", "version": 2, "recipe": "reader", "composed": False}
    assert rows["memorize_closed_book"]["adapter"]["name"] == rows["memorize_retrieval"]["adapter"]["name"] == "memo"
    assert rows["composed"]["adapter"] == {"name": "mix", "version": 1, "recipe": None, "composed": True}
    assert [rows[r]["engine_model"] for r in ROUTES] == [
        settings.base_model_name] * 3 + ["reader@2", "memo@1", "memo@1", "mix@1"]
    # One run per row on the same items: every question the report asked is one of theirs (the other
    # engine calls are the adapters' warm-ups).
    asked = [b for b in engine.requests[calls:] if "messages" in b]
    assert len(asked) == len(ROUTES) * len(ITEMS)
    closed = [b for b in asked if b["model"] == "memo@1"
              and "(document: " not in (b["messages"][0]["content"] if b["messages"][0]["role"] == "system" else "")]
    assert len(closed) == len(ITEMS)

    # The intervals are the paired bootstrap of the runs' own per-item scores, as the API lists them.
    assert rows["retrieval"]["delta"] is None
    items = {}
    for route in ("retrieval", "reader", "composed", "closed_book"):
        listed = (await http.get(f"/v1/evals/{rows[route]['eval_id']}/items")).json()["items"]
        items[route] = {i["id"]: i["answer_contains"] for i in listed}
    for route, delta in (("reader", 0.5), ("composed", 0.0), ("closed_book", -0.5)):
        ids = sorted(items["retrieval"])
        expected = paired_bootstrap([items["retrieval"][i] for i in ids], [items[route][i] for i in ids])
        got = rows[route]["delta"]["answer_contains"]
        assert {k: got[k] for k in expected} == expected and expected["delta"] == delta, (route, got)
    assert rows["reader"]["delta"]["answer_contains"]["low"] > 0 > rows["closed_book"]["delta"]["answer_contains"]["high"]
    assert rows["reader"]["delta"]["answer_contains"]["wins"] == len(ITEMS) - len(PARTLY)

    # The runs are ordinary evaluation runs; the live domain is as it was; the report is listed.
    listed = {run["id"]: run for run in (await http.get("/v1/evals?domain=lore")).json()["data"]}
    assert {rows[r]["eval_id"] for r in ROUTES} <= set(listed)
    assert listed[rows["reader"]["eval_id"]]["candidate"] == {"name": "reader", "version": 2}
    assert listed[rows["closed_book"]["eval_id"]]["retrieval"] is None
    assert (await http.get("/v1/domains/lore")).json() == before
    reports = (await http.get("/v1/domains/lore/reports")).json()["data"]
    assert [(r["job_id"], r["status"]) for r in reports] == [(job["id"], "succeeded")]
    assert reports[0]["result"] == result
    audited = (await http.get("/v1/audit", params={"action": "domain.report"})).json()["data"]
    assert [(e["target"], e["details"]["job_id"]) for e in audited] == [("lore", job["id"])]


async def test_rows_without_an_ingredient_are_listed_with_the_reason_and_named_ones_are_used(served):
    http, _, engine, settings = served
    record_training(settings, "tone", 1, "elsewhere", "reader")  # a reader of another corpus is not this domain's
    calls = len(engine.requests)
    result = (await report(http))["result"]
    rows = {row["route"]: row for row in result["rows"]}
    assert [row["route"] for row in result["rows"]] == ROUTES  # none dropped
    assert [r for r in ROUTES if rows[r]["available"]] == ["closed_book", "retrieval"]
    assert "no configuration version from a tuning" in rows["tuned"]["reason"]
    assert "recipe 'reader'" in rows["reader"]["reason"] and "recipe 'memorize'" in rows["memorize_retrieval"]["reason"]
    assert "composed" in rows["composed"]["reason"]
    assert len(engine.requests) - calls == 2 * len(ITEMS)
    # `tone` was uploaded, not trained: named explicitly it feeds the row; a row left out says so.
    result = (await report(http, routes={"reader": {"name": "tone", "version": 1}, "memorize": False}))["result"]
    rows = {row["route"]: row for row in result["rows"]}
    assert (rows["reader"]["available"], rows["reader"]["source"], rows["reader"]["engine_model"]) == (
        True, "request", "tone@1")
    assert rows["reader"]["metrics"]["answer_contains"] == 0.5  # tone is not scripted: as the base model
    assert rows["memorize_closed_book"]["reason"] == rows["memorize_retrieval"]["reason"] == "left out by the request"


async def test_bad_requests_are_400_unknown_names_404_and_commit_nothing(served):
    http, _, _, _ = served
    for body, param in (({"evalset": "lore-qa", "routes": {"reader": {"name": "tone"}}}, "routes.reader"),
                        ({"evalset": "lore-qa", "routes": {"bogus": False}}, "routes.bogus"),
                        ({"evalset": "lore-qa", "routes": {"tuned": {"version": 0}}}, "routes.tuned"),
                        ({"evalset": "lore-qa", "max_tokens": 0}, "max_tokens"),
                        ({"evalset": "no/such"}, "evalset"), ({}, "evalset")):
        answer = await http.post("/v1/domains/lore/reports", json=body)
        assert answer.status_code == 400 and answer.json()["error"]["param"].startswith(param), answer.text
    for path, body, code in (
            ("/v1/domains/nope/reports", {"evalset": "lore-qa"}, "domain_not_found"),
            ("/v1/domains/lore/reports", {"evalset": "nope"}, "evalset_not_found"),
            ("/v1/domains/lore/reports", {"evalset": "lore-qa", "routes": {"reader": {"name": "tone", "version": 9}}},
             "adapter_not_found"),
            ("/v1/domains/lore/reports", {"evalset": "lore-qa", "routes": {"composed": {"name": "x", "version": 1}}},
             "adapter_not_found"),
            ("/v1/domains/lore/reports", {"evalset": "lore-qa", "routes": {"tuned": {"version": 3}}},
             "config_not_found")):
        answer = await http.post(path, json=body)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == code, answer.text
    assert (await http.get("/v1/domains/nope/reports")).status_code == 404
    assert (await http.get("/v1/jobs?kind=report")).json()["data"] == []
    assert (await http.get("/v1/domains/lore/reports")).json()["data"] == []


async def test_a_filtered_key_may_not_report_and_a_tenant_reports_on_its_own_only(served, good_lora):
    http, url, _, _ = served
    made = await http.post("/v1/keys", json={"name": "hr", "scope": "admin", "filter": {"group": "hr"}})
    async with client(url, made.json()["key"]) as filtered:
        refused = await filtered.post("/v1/domains/lore/reports", json={"evalset": "lore-qa"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "document_filter", refused.text
    assert (await http.post("/v1/tenants", json={"name": "acme"})).status_code == 201
    made = await http.post("/v1/keys", json={"name": "acme-admin", "scope": "admin", "tenant": "acme"})
    async with client(url, made.json()["key"]) as acme:
        for answer in (await acme.post("/v1/domains/lore/reports", json={"evalset": "lore-qa"}),
                       await acme.get("/v1/domains/lore/reports")):  # acme:lore does not exist yet
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "domain_not_found", answer.text
        await lore(acme)  # acme's own corpus, domain and set, under the same short names
        # The global `tone` is not in acme's namespace: named, it is not found; by default, not used.
        named = await acme.post("/v1/domains/lore/reports", json={
            "evalset": "lore-qa", "routes": {"reader": {"name": "tone", "version": 1}}})
        assert named.status_code == 404 and named.json()["error"]["code"] == "adapter_not_found", named.text
        job = await report(acme)
        assert [r["route"] for r in job["result"]["rows"] if r["available"]] == ["closed_book", "retrieval"]
        assert job["result"]["domain"] == "acme:lore"
        assert [r["job_id"] for r in (await acme.get("/v1/domains/lore/reports")).json()["data"]] == [job["id"]]
    # The global domain's reports are its own; acme's report is acme's job.
    assert (await http.get("/v1/domains/lore/reports")).json()["data"] == []
    assert [r["job_id"] for r in (await http.get("/v1/domains/acme:lore/reports")).json()["data"]] == [job["id"]]


async def test_a_report_is_cancelled_with_its_run(served):
    http, _, engine, _ = served
    engine.hold_completions = asyncio.Event()
    started = await http.post("/v1/domains/lore/reports", json={"evalset": "lore-qa"})
    job_id = started.json()["job_id"]
    await until(lambda: engine.requests, "the report's first question")
    assert (await http.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
    job = await wait_job(http, job_id)
    engine.hold_completions.set()
    assert (job["status"], job["reason"], job["result"]) == ("cancelled", "cancelled", None)
    runs = (await http.get("/v1/evals?domain=lore")).json()["data"]
    assert [run["status"] for run in runs] == ["cancelled"]


async def test_a_report_cut_short_by_a_restart_is_failed_with_the_reason(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[ADMIN])
    db = make_engine(settings.resolved_database_url)
    with make_session_factory(db)() as session, session.begin():
        session.add(Job(id="cut-short", kind="report", status="running", params={"domain": "lore"}))
    db.dispose()
    async with running_gateway(settings) as url, client(url, ADMIN) as http:
        job = (await http.get("/v1/jobs/cut-short")).json()
    assert (job["kind"], job["status"]) == ("report", "failed")
    assert job["reason"] == "the gateway restarted during the report; start it again"
