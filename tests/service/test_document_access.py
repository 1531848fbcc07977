"""Document-level access over the API: documents tagged with groups, a key of group X (filter
{"group": ["hr", "all"]}), an admin key of group hr, a domain with an enforced filter. On every
route that returns text (search, both completion endpoints, streaming, citations, the documents
list) nothing of group eng comes back or reaches the engine, also through the request's
`retrieval.corpora` and `retrieval.filter`; with k requested, k come back when k are allowed.

Real embedder, FAISS, BM25 and database; the engine is the fake one, which records the prompts it
receives (and echoes them back, so a passage that reached it would show in the answer too).
"""

import json

import pytest
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from adapters_store.db import make_engine, session_scope
from service.cli import app as cli
from service.keys import create_key
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import wait_job

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")

BOOT = "boot-admin"
X = {"group": ["hr", "all"]}  # what the key of group X may read
SECRET = "ENGSECRET"  # in every document of group eng, and nowhere else

HANDBOOK = [
    ("hr-leave", "hr", "Vacation policy for HR staff: thirty days of paid leave a year. Code HRALPHA."),
    ("hr-carry", "hr", "HR staff may carry over five vacation days into the next year. Code HRBETA."),
    ("all-leave", "all", "Every employee has a vacation allowance; ask your manager first. Code ALLGAMMA."),
    ("shared-calendar", ["hr", "eng"], "The shared vacation calendar of HR and engineering. Code MIXDELTA."),
] + [(f"eng-{i}", "eng", f"Vacation policy for engineers, part {i}: paid leave and vacation days. "
                         f"Code {SECRET}{i}.") for i in range(8)]
VISIBLE = {"hr-leave", "hr-carry", "all-leave", "shared-calendar"}  # to X
WIKI = [("wiki-eng", "eng", f"Vacation days are booked in the engineering vacation tool. Code {SECRET}WIKI."),
        ("wiki-hr", "hr", "Vacation days of HR staff are booked in the HR portal. Code HRWIKI.")]
QUESTION = "How many vacation days of paid leave do I get?"


def documents(rows) -> dict:
    return {"documents": [{"id": i, "text": t, "metadata": {"group": g, "lang": "en"}} for i, g, t in rows]}


@pytest.fixture
async def deployment(make_settings, fake_engine):
    """(settings, base URL, keys by name): two corpora, two domains, keys with and without filters."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    db = make_engine(settings.resolved_database_url)
    with session_scope(sessionmaker(db)) as session:
        keys = {"x": create_key(session, "x", "inference", X)[1],
                "plain": create_key(session, "plain", "inference")[1],
                "hr-admin": create_key(session, "hr-admin", "admin", {"group": "hr"})[1]}
    db.dispose()
    async with running_gateway(settings) as url:
        async with client(url, BOOT) as admin:
            for corpus, rows in (("handbook", HANDBOOK), ("wiki", WIKI)):
                assert (await admin.post("/v1/corpora", json={"name": corpus})).status_code == 201
                job = (await admin.post(f"/v1/corpora/{corpus}/documents", json=documents(rows))).json()
                assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
            put = await admin.put("/v1/domains/handbook", json={"corpora": ["handbook"], "retrieval": {"k": 4}})
            assert put.status_code == 201, put.text
            put = await admin.put("/v1/domains/public", json={
                "corpora": ["handbook"], "retrieval": {"k": 4, "filter": {"group": "all"}}})
            assert put.status_code == 201, put.text
            assert put.json()["retrieval"]["filter"] == {"group": ["all"]}  # canonical form
        yield settings, url, keys


def ids_of(hits) -> list[str]:
    return [h["document_id"] for h in hits]


def assert_no_secret(*texts) -> None:
    for text in texts:
        assert SECRET not in (text if isinstance(text, str) else json.dumps(text))


async def test_search_returns_only_allowed_chunks_and_k_of_them(deployment):
    _, url, keys = deployment
    async with client(url, keys["x"]) as x, client(url, keys["plain"]) as plain:
        for mode in ("dense", "bm25", "hybrid"):
            body = {"query": QUESTION, "k": 4, "mode": mode}
            unfiltered = (await plain.post("/v1/corpora/handbook/search", json=body)).json()["hits"]
            assert any(SECRET in h["text"] for h in unfiltered)  # the eng documents rank first unfiltered
            response = await x.post("/v1/corpora/handbook/search", json=body)
            assert response.status_code == 200, response.text
            hits = response.json()["hits"]
            assert set(ids_of(hits)) == VISIBLE, (mode, ids_of(hits))  # k=4 asked, 4 allowed: 4 back
            assert_no_secret(response.text)
            groups = [g if isinstance(g, list) else [g] for g in (h["metadata"]["group"] for h in hits)]
            assert all({"hr", "all"} & set(g) for g in groups)
            many = (await x.post("/v1/corpora/handbook/search", json={**body, "k": 50})).json()["hits"]
            assert set(ids_of(many)) == VISIBLE  # fewer allowed than k: all of them

        # The request's filter narrows; it cannot widen what the key allows.
        narrowed = await x.post("/v1/corpora/handbook/search", json={"query": QUESTION, "filter": {"group": "all"}})
        assert ids_of(narrowed.json()["hits"]) == ["all-leave"]
        widened = await x.post("/v1/corpora/handbook/search", json={"query": QUESTION, "filter": {"group": "eng"}})
        assert widened.status_code == 200 and widened.json()["hits"] == []
        other = await x.post("/v1/corpora/wiki/search", json={"query": QUESTION, "k": 5})
        assert ids_of(other.json()["hits"]) == ["wiki-hr"]
        by_plain = await plain.post("/v1/corpora/handbook/search", json={
            "query": QUESTION, "k": 3, "filter": {"group": "eng", "lang": ["en", "de"]}})
        assert len(by_plain.json()["hits"]) == 3 and all(SECRET in h["text"] for h in by_plain.json()["hits"])

        for bad, param in (({"group": []}, "filter.group"), ({"group": [None]}, "filter.group[0]"),
                           ("hr", "filter"), ({"group": {"$in": ["eng"]}}, "filter.group")):
            refused = await x.post("/v1/corpora/handbook/search", json={"query": QUESTION, "filter": bad})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == param


async def test_completions_streaming_and_citations_never_carry_another_groups_text(deployment, fake_engine):
    _, url, keys = deployment
    chat = {"model": "handbook", "messages": [{"role": "user", "content": QUESTION}]}
    text = {"model": "handbook", "prompt": QUESTION}
    async with client(url, keys["x"]) as x, client(url, keys["plain"]) as plain:
        sanity = await plain.post("/v1/chat/completions", json=chat)
        assert SECRET in json.dumps(fake_engine.requests[-1]) and SECRET in sanity.text

        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", text)):
            fake_engine.requests.clear()
            response = await x.post(path, json=body)
            assert response.status_code == 200, response.text
            assert set(ids_of(response.json()["citations"])) == VISIBLE  # domain k=4: 4 allowed passages
            assert_no_secret(response.text, fake_engine.requests)

            fake_engine.requests.clear()
            stream = await x.post(path, json={**body, "stream": True})
            assert stream.status_code == 200 and stream.text.rstrip().endswith("data: [DONE]")
            events = [json.loads(line[5:]) for line in stream.text.splitlines()
                      if line.startswith("data:") and line != "data: [DONE]"]
            assert set(ids_of(events[0]["citations"])) == VISIBLE
            assert_no_secret(stream.text, fake_engine.requests)

            # Through the request's corpora: the other corpus is filtered the same way.
            fake_engine.requests.clear()
            wide = await x.post(path, json={**body, "retrieval": {"corpora": ["handbook", "wiki"], "k": 20}})
            assert set(ids_of(wide.json()["citations"])) == VISIBLE | {"wiki-hr"}
            assert_no_secret(wide.text, fake_engine.requests)

            # Through the request's filter: it narrows, and one naming group eng finds nothing.
            narrow = await x.post(path, json={**body, "retrieval": {"filter": {"group": "hr"}, "mode": "bm25"}})
            assert set(ids_of(narrow.json()["citations"])) == {"hr-leave", "hr-carry", "shared-calendar"}
            fake_engine.requests.clear()
            widen = await x.post(path, json={**body, "retrieval": {"filter": {"group": "eng"},
                                                                    "corpora": ["handbook", "wiki"]}})
            assert widen.status_code == 200 and widen.json()["citations"] == []
            assert_no_secret(widen.text, fake_engine.requests)

        refused = await x.post("/v1/chat/completions", json={**chat, "retrieval": {"filter": {"group": []}}})
        assert refused.status_code == 400 and refused.json()["error"]["param"].startswith("retrieval.filter")
        assert "filter.group" in refused.json()["error"]["message"]


async def test_a_domains_enforced_filter_applies_to_every_key_and_request(deployment, fake_engine):
    _, url, keys = deployment
    chat = {"model": "public", "messages": [{"role": "user", "content": QUESTION}]}
    async with client(url, keys["x"]) as x, client(url, keys["plain"]) as plain, client(url, BOOT) as admin:
        for http in (x, plain, admin):
            fake_engine.requests.clear()
            response = await http.post("/v1/chat/completions", json=chat)
            assert ids_of(response.json()["citations"]) == ["all-leave"]
            assert_no_secret(response.text, fake_engine.requests)
            assert "HRALPHA" not in json.dumps(fake_engine.requests)
            fake_engine.requests.clear()
            wide = await http.post("/v1/completions", json={
                "model": "public", "prompt": QUESTION, "stream": True,
                "retrieval": {"corpora": ["handbook", "wiki"], "k": 10, "filter": {"lang": "en"}}})
            assert '"document_id":"all-leave"' in wide.text and "HRWIKI" not in wide.text
            assert_no_secret(wide.text, fake_engine.requests)
        hr_only = await x.post("/v1/chat/completions", json={**chat, "retrieval": {"filter": {"group": "hr"}}})
        assert hr_only.json()["citations"] == []  # {all} ∩ {hr, all} ∩ {hr} is empty: nothing, not everything

        # A bad enforced filter is refused and nothing is committed.
        bad = await admin.put("/v1/domains/broken", json={"corpora": ["handbook"],
                                                         "retrieval": {"filter": {"group": [["eng"]]}}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "retrieval.filter.group[0]"
        assert (await admin.get("/v1/domains/broken")).status_code == 404
        # Lifting it: the domain's filter is gone on the next request.
        lifted = await admin.put("/v1/domains/public", json={"corpora": ["handbook"], "retrieval": {"k": 4}})
        assert lifted.json()["retrieval"]["filter"] is None
        response = await x.post("/v1/chat/completions", json=chat)
        assert set(ids_of(response.json()["citations"])) == VISIBLE


async def test_an_admin_keys_filter_applies_to_its_search_and_document_list(deployment):
    _, url, keys = deployment
    async with client(url, keys["hr-admin"]) as hr_admin, client(url, BOOT) as admin:
        hits = (await hr_admin.post("/v1/corpora/handbook/search", json={"query": QUESTION, "k": 10})).json()["hits"]
        assert set(ids_of(hits)) == {"hr-leave", "hr-carry", "shared-calendar"}
        listed = (await hr_admin.get("/v1/corpora/handbook/documents")).json()
        assert sorted(d["id"] for d in listed["data"]) == ["hr-carry", "hr-leave", "shared-calendar"]
        first = (await hr_admin.get("/v1/corpora/handbook/documents", params={"limit": 2})).json()
        rest = (await hr_admin.get("/v1/corpora/handbook/documents",
                                   params={"limit": 2, "after": first["data"][-1]["id"]})).json()
        assert [d["id"] for d in first["data"] + rest["data"]] == ["hr-carry", "hr-leave", "shared-calendar"]
        assert first["has_more"] and not rest["has_more"]
        everything = (await admin.get("/v1/corpora/handbook/documents")).json()["data"]
        assert len(everything) == len(HANDBOOK)


async def test_a_filtered_admin_key_cannot_evaluate_or_train(deployment):
    """Evaluations and trainings read every document of a corpus (their items and examples quote
    them): a key with a filter is refused them with 403, before anything is looked up or started;
    a key without one gets past the check (here to a 404 for what does not exist)."""
    _, url, keys = deployment
    requests = [("POST", "/v1/evals", {"domain": "handbook", "evalset": "nope"}),
                ("GET", "/v1/evals/nope/items", None),
                ("POST", "/v1/adapters/tuned/trainings", {"corpus": "handbook", "recipe": "reader"}),
                ("GET", "/v1/jobs/nope/examples", None)]
    async with client(url, keys["hr-admin"]) as hr_admin, client(url, BOOT) as admin:
        for method, path, body in requests:
            refused = await hr_admin.request(method, path, json=body)
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["code"] == "document_filter", refused.text
        for method, path, body in requests[:2] + requests[3:]:
            assert (await admin.request(method, path, json=body)).status_code == 404, path
        assert (await admin.get("/v1/evals")).json()["data"] == []


async def test_retagging_a_document_changes_who_sees_it(deployment):
    """Uploading the same text again with new metadata is a change (it used to be skipped)."""
    _, url, keys = deployment
    async with client(url, keys["x"]) as x, client(url, BOOT) as admin:
        before = (await x.post("/v1/corpora/handbook/search", json={"query": "vacation allowance manager"})).json()
        assert "all-leave" in ids_of(before["hits"])
        text = dict((i, t) for i, _, t in HANDBOOK)["all-leave"]
        job = (await admin.post("/v1/corpora/handbook/documents", json={
            "documents": [{"id": "all-leave", "text": text, "metadata": {"group": "eng"}}]})).json()
        assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
        after = (await x.post("/v1/corpora/handbook/search", json={"query": "vacation allowance manager"})).json()
        assert "all-leave" not in ids_of(after["hits"]) and len(after["hits"]) == 3
        listed = (await admin.get("/v1/corpora/handbook/documents")).json()["data"]
        assert {d["id"]: d["metadata"] for d in listed}["all-leave"] == {"group": "eng"}


async def test_keys_create_with_a_filter_on_the_command_line(make_settings, fake_engine, monkeypatch):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    monkeypatch.setenv("GRAFT_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("GRAFT_DATABASE_URL", settings.database_url)
    runner = CliRunner()
    bad = runner.invoke(cli, ["keys", "create", "bad", "--filter", '{"group": []}'])
    assert bad.exit_code == 1 and "filter.group" in bad.output
    assert runner.invoke(cli, ["keys", "create", "bad", "--filter", "{group: hr}"]).exit_code == 1
    made = runner.invoke(cli, ["keys", "create", "hr-app", "--filter", '{"group": ["hr", "all"]}'])
    assert made.exit_code == 0, made.output
    key = made.output.split("\t")[0].strip()
    assert 'filter {"group": ["all", "hr"]}' in made.output
    listed = runner.invoke(cli, ["keys", "list"])
    assert [line for line in listed.output.splitlines() if "hr-app" in line][0].endswith(
        'hr-app\tfilter {"group": ["all", "hr"]}')
    assert "\tbad" not in listed.output  # refused keys were not stored

    async with running_gateway(settings) as url:
        async with client(url, BOOT) as admin, client(url, key) as hr_app:
            await admin.post("/v1/corpora", json={"name": "handbook"})
            job = (await admin.post("/v1/corpora/handbook/documents", json=documents(HANDBOOK))).json()
            assert (await wait_job(admin, job["job_id"]))["status"] == "succeeded"
            hits = (await hr_app.post("/v1/corpora/handbook/search", json={"query": QUESTION, "k": 4})).json()
            assert set(ids_of(hits["hits"])) == VISIBLE
