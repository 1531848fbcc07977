"""Index rebuilds and contextual headers over REST, with the real embedder, FAISS, BM25 and SQLite
(the engine is faked: unused here)."""

import asyncio
import threading
import time

import pytest

import indexer.rebuild
from tests.harness import client, running_gateway
from tests.service.test_corpora_api import search, upload, wait_job

HANDBOOK = b"""# Quillon Handbook

Welcome text for the new staff members who join the team this season, with a few words on
what the first week looks like and who to ask when something is unclear.

## Payroll

Salaries are paid on the last working day of each month by bank transfer. Expense claims go
through the finance portal and are reimbursed with the next salary payment.

## Parking

Each employee gets one reserved space in the north garage behind the depot. Bicycles go in the
covered racks next to the main entrance, and visitors park on the street.
"""

NOTES = [(f"note-{n}.txt", (f"Note {n} describes the maintenance of pump station {n}. " * 12).encode(),
          "text/plain") for n in range(6)]


async def until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.02)


@pytest.fixture
async def gateway(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url])
    async with running_gateway(settings) as url, client(url) as http:
        yield http, settings


@pytest.fixture
def paused_publish(monkeypatch):
    """Hold a rebuild just before it publishes (all its work done): `reached` is set there, and it
    goes on when `release` is set."""
    reached, release = threading.Event(), threading.Event()
    publish = indexer.rebuild.publish_change

    def held(*args, **kwargs):
        reached.set()
        if not release.wait(120):
            raise TimeoutError("the test never released the rebuild")
        return publish(*args, **kwargs)

    monkeypatch.setattr(indexer.rebuild, "publish_change", held)
    yield reached, release
    release.set()


async def test_a_rebuild_switches_generation_while_searches_keep_answering(gateway, paused_publish):
    http, settings = gateway
    reached, release = paused_publish
    created = await http.post("/v1/corpora", json={"name": "guide", "chunk_size": 128, "chunk_overlap": 16})
    assert created.status_code == 201 and created.json()["contextual_headers"] is False
    job = await upload(http, "guide", [("handbook.md", HANDBOOK, "text/markdown"), *NOTES])
    assert job["status"] == "succeeded" and job["kind"] == "ingest"
    before = (await http.get("/v1/corpora/guide")).json()
    queries = [("reserved space in the garage", mode) for mode in ("dense", "bm25", "hybrid")]
    answers = {q: await search(http, "guide", *q) for q in queries}
    assert all(hits for hits in answers.values())
    title_only = await search(http, "guide", "quillon", "bm25", k=10)
    assert len(title_only) == 1  # without headers only the chunk with the title line has the word

    response = await http.post("/v1/corpora/guide/rebuild",
                               json={"chunk_size": 32, "chunk_overlap": 0, "contextual_headers": True})
    assert response.status_code == 202, response.text
    assert response.json() == {"job_id": response.json()["job_id"], "status": "queued"}
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    assert await asyncio.to_thread(reached.wait, 120), "the rebuild never reached its publish"

    # Everything is chunked and embedded; the switch has not happened: the old generation answers.
    running = (await http.get(f"/v1/jobs/{job_id}")).json()
    assert running["status"] == "running" and running["kind"] == "rebuild" and running["result"] is None
    assert running["progress"]["chunks_done"] == running["progress"]["chunks_total"] > before["chunks"]
    assert (await http.get("/v1/corpora/guide")).json() == before
    for query, hits in answers.items():
        assert await search(http, "guide", *query) == hits
    assert await search(http, "guide", "quillon", "bm25", k=10) == title_only

    release.set()
    job = await wait_job(http, job_id)
    assert job["status"] == "succeeded" and job["errors"] == [], job
    after = (await http.get("/v1/corpora/guide")).json()
    assert job["result"] == {"generation": 2, "documents": 7, "chunks": after["chunks"], "chunk_size": 32,
                             "chunk_overlap": 0, "contextual_headers": True}
    assert (after["generation"], after["chunk_size"], after["chunk_overlap"], after["contextual_headers"]) == (
        2, 32, 0, True)
    assert after["documents"] == before["documents"] and after["chunks"] > before["chunks"]
    # The job is marked succeeded in the commit that flips the pointer; the switch in memory and the
    # removal of the old generation's files follow it at once.
    await until(lambda: [p.name for d in settings.indexes_dir.iterdir() for p in d.iterdir()] == ["gen-00000002"])

    # The title now reaches every chunk of the handbook for BM25 and dense search; hits show plain text.
    headed = await search(http, "guide", "quillon", "bm25", k=10)
    assert len(headed) > 2 and {h["document_id"] for h in headed} == {"handbook.md"}
    assert all(not h["text"].startswith("Quillon Handbook") for h in headed)
    garage = (await search(http, "guide", "reserved space in the garage", "dense", k=1))[0]
    assert garage["document_id"] == "handbook.md" and "north garage" in garage["text"]
    assert garage["chunk_id"] not in {h["chunk_id"] for h in answers[queries[0]]}  # a new chunk


async def test_headers_at_creation_make_section_words_findable(gateway):
    http, _ = gateway
    for name, headers in (("plain", False), ("headed", True)):
        created = await http.post("/v1/corpora", json={"name": name, "chunk_size": 24, "chunk_overlap": 0,
                                                       "contextual_headers": headers})
        assert created.status_code == 201 and created.json()["contextual_headers"] is headers
        assert (await upload(http, name, [("handbook.md", HANDBOOK, "text/markdown")]))["status"] == "succeeded"
    # "Parking" is only in the section's heading line: without headers only the chunk that holds
    # that line has the word; with them every chunk of the section does, and hits show no header.
    plain = await search(http, "plain", "parking", "bm25", k=10)
    headed = await search(http, "headed", "parking", "bm25", k=10)
    assert plain and all("Parking" in h["text"] for h in plain)
    assert len(headed) > len(plain) and any("Bicycles" in h["text"] for h in headed)
    assert {h["text"] for h in plain} < {h["text"] for h in headed}
    assert all(" > " not in h["text"] for h in headed)
    listed = (await http.get("/v1/corpora")).json()["data"]
    assert {c["name"]: c["contextual_headers"] for c in listed} == {"plain": False, "headed": True}


async def test_rebuild_requests_are_checked(gateway):
    http, _ = gateway
    await http.post("/v1/corpora", json={"name": "c", "chunk_size": 64, "chunk_overlap": 20})
    for body in ({"chunk_size": 8}, {"chunk_size": 5000}, {"chunk_size": 16},  # the corpus's overlap 20 >= 16
                 {"chunk_size": 32, "chunk_overlap": 32}, {"chunk_overlap": -1}, {"colour": "red"},
                 {"contextual_headers": "yes"}, {"chunk_size": "big"}):
        response = await http.post("/v1/corpora/c/rebuild", json=body)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for raw in (b"", b"{oops", b"[]"):
        assert (await http.post("/v1/corpora/c/rebuild", content=raw)).status_code == 400
    missing = await http.post("/v1/corpora/nope/rebuild", json={"chunk_size": 32})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "corpus_not_found"
    assert (await http.get("/v1/corpora/c")).json()["chunk_size"] == 64

    empty = await http.post("/v1/corpora/c/rebuild", json={})  # nothing to change: same settings, anew
    job = await wait_job(http, empty.json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["documents"] == 0


async def test_a_failed_rebuild_leaves_the_old_generation_serving(gateway):
    http, settings = gateway
    await http.post("/v1/corpora", json={"name": "c", "chunk_size": 64, "chunk_overlap": 0})
    await upload(http, "c", NOTES[:2])
    before = (await http.get("/v1/corpora/c")).json()
    hits = await search(http, "c", "pump station maintenance")
    for path in settings.uploads_dir.rglob("*.raw"):  # the kept raw uploads are lost
        path.unlink()

    response = await http.post("/v1/corpora/c/rebuild", json={"chunk_size": 16})
    job = await wait_job(http, response.json()["job_id"])
    assert job["status"] == "failed" and "no document could be rebuilt" in job["reason"]
    assert sorted(e["document_id"] for e in job["errors"]) == ["note-0.txt", "note-1.txt"]
    assert (await http.get("/v1/corpora/c")).json() == before
    assert await search(http, "c", "pump station maintenance") == hits
