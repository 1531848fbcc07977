"""Corpora over REST with the real embedder, FAISS, BM25 and SQLite (the engine is faked: unused here)."""

import asyncio
import json
import shutil

import pytest

from tests.harness import client, running_gateway

# Each test on SQLite and on a fresh PostgreSQL database (tests/conftest.py, `database_url`).
pytestmark = pytest.mark.databases("sqlite", "postgresql")


@pytest.fixture
async def gateway(make_settings, fake_engine):
    settings = make_settings(engine_urls=[fake_engine.url], max_upload_bytes=200_000)
    async with running_gateway(settings) as url:
        async with client(url) as http:
            yield http


async def wait_job(http, job_id: str, timeout: float = 120) -> dict:
    for _ in range(int(timeout * 10)):
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def upload(http, corpus: str, files: list[tuple[str, bytes, str]]) -> dict:
    response = await http.post(f"/v1/corpora/{corpus}/documents",
                               files=[("files", f) for f in files])
    assert response.status_code == 202, response.text
    assert set(response.json()) == {"job_id", "status"}
    return await wait_job(http, response.json()["job_id"])


async def search(http, corpus: str, query: str, mode: str = "hybrid", k: int = 5) -> list[dict]:
    response = await http.post(f"/v1/corpora/{corpus}/search", json={"query": query, "k": k, "mode": mode})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


HTML = b"""<html><head><title>Falcons</title></head><body><nav>Home | About | Contact</nav>
<main><h1>Peregrine falcons</h1><p>The peregrine falcon is the fastest bird, diving at over
300 km/h to strike its prey in mid-air. It nests on cliffs and, in cities, on tall buildings.</p>
</main><footer>Copyright 2026</footer></body></html>"""


async def test_corpus_lifecycle(gateway):
    created = await gateway.post("/v1/corpora", json={"name": "zoo", "chunk_size": 64, "chunk_overlap": 8})
    assert created.status_code == 201, created.text
    assert {"name": "zoo", "documents": 0, "chunks": 0, "generation": None}.items() <= created.json().items()

    job = await upload(gateway, "zoo", [
        ("otters.txt", b"Sea otters hold hands while they sleep so they do not drift apart.", "text/plain"),
        ("notes.md", b"# Axolotls\n\nAxolotls can regrow their limbs, heart and parts of their brain.",
         "text/markdown"),
        ("falcons.html", HTML, "text/html"),
        ("more.jsonl", b'{"id": "koala", "text": "Koalas sleep up to 22 hours a day.", "metadata": {"a": 1}}\n',
         "application/jsonl"),
        ("empty.txt", b"", "text/plain"),
        ("binary.txt", b"\x00\xff\xfe\x00garbage\x00", "text/plain"),
    ])
    assert job["status"] == "succeeded"
    assert job["progress"]["documents_total"] == 6 and job["progress"]["documents_done"] == 4
    assert {e["file"] for e in job["errors"]} == {"empty.txt", "binary.txt"}

    hits = await search(gateway, "zoo", "which animal regrows its limbs?")
    assert hits[0]["document_id"] == "notes.md"
    assert hits[0]["metadata"] == {"filename": "notes.md", "content_type": "text/markdown"}
    assert set(hits[0]) == {"corpus", "document_id", "chunk_id", "score", "text", "metadata"}
    for mode in ("dense", "bm25", "hybrid"):
        assert (await search(gateway, "zoo", "fastest bird diving", mode))[0]["document_id"] == "falcons.html"
    falcon = (await search(gateway, "zoo", "peregrine falcon", "bm25"))[0]
    assert "Home | About" not in falcon["text"] and "Copyright" not in falcon["text"]
    koala = (await search(gateway, "zoo", "koala sleep hours", "bm25"))[0]
    assert koala["document_id"] == "koala" and koala["metadata"]["a"] == 1

    stats = (await gateway.get("/v1/corpora/zoo")).json()
    assert stats["documents"] == 4 and stats["chunks"] >= 4 and stats["generation"] == 1
    listed = (await gateway.get("/v1/corpora/zoo/documents")).json()["data"]
    assert sorted(d["id"] for d in listed) == ["falcons.html", "koala", "notes.md", "otters.txt"]

    deleted = await gateway.delete("/v1/corpora/zoo/documents/otters.txt")
    assert deleted.status_code == 200
    assert all(h["document_id"] != "otters.txt" for h in await search(gateway, "zoo", "sea otters sleep"))

    assert (await gateway.delete("/v1/corpora/zoo")).status_code == 200
    assert (await gateway.get("/v1/corpora/zoo")).status_code == 404


async def test_deleted_corpus_leaves_no_files_and_its_id_can_be_reused(gateway, tmp_path):
    indexes = tmp_path / "data" / "indexes"
    text = {"documents": [{"id": "old", "text": "Narwhal tusks are long teeth."}]}
    await gateway.post("/v1/corpora", json={"name": "sea"})
    await wait_job(gateway, (await gateway.post("/v1/corpora/sea/documents", json=text)).json()["job_id"])
    [folder] = list(indexes.iterdir())
    stale = tmp_path / "stale"
    shutil.copytree(folder, stale)

    assert (await gateway.delete("/v1/corpora/sea")).status_code == 200
    assert list(indexes.iterdir()) == []
    # As if the gateway had crashed after the delete's commit, before removing the files; SQLite
    # gives the next corpus the same id, so it would find them where it writes its own.
    shutil.copytree(stale, folder)
    await gateway.post("/v1/corpora", json={"name": "lake"})
    text = {"documents": [{"id": "new", "text": "Pike hunt in shallow lakes."}]}
    job = await wait_job(gateway, (await gateway.post("/v1/corpora/lake/documents", json=text)).json()["job_id"])
    assert job["status"] == "succeeded", job
    assert [h["document_id"] for h in await search(gateway, "lake", "narwhal pike", "bm25")] == ["new"]


async def test_dedup_and_replace(gateway):
    await gateway.post("/v1/corpora", json={"name": "facts"})
    first = {"documents": [{"id": "capital", "text": "The capital of Zubrowka is Lutz."}]}
    job = await wait_job(gateway, (await gateway.post("/v1/corpora/facts/documents", json=first)).json()["job_id"])
    assert job["status"] == "succeeded"
    before = (await gateway.get("/v1/corpora/facts")).json()

    again = await wait_job(gateway, (await gateway.post("/v1/corpora/facts/documents", json=first)).json()["job_id"])
    after = (await gateway.get("/v1/corpora/facts")).json()
    assert again["status"] == "succeeded" and after["chunks"] == before["chunks"]
    assert after["generation"] == before["generation"]  # nothing new to index

    second = {"documents": [{"id": "capital", "text": "The capital of Zubrowka moved to Nebelsbad."}]}
    await wait_job(gateway, (await gateway.post("/v1/corpora/facts/documents", json=second)).json()["job_id"])
    hits = await search(gateway, "facts", "capital of Zubrowka", "bm25")
    assert [h["text"] for h in hits] == ["The capital of Zubrowka moved to Nebelsbad."]


async def test_bad_uploads_are_refused_and_lose_nothing(gateway):
    await gateway.post("/v1/corpora", json={"name": "docs"})
    await upload(gateway, "docs", [("keep.txt", b"Glass frogs have transparent skin.", "text/plain")])

    unsupported = await gateway.post("/v1/corpora/docs/documents",
                                     files=[("files", ("a.exe", b"MZ...", "application/octet-stream"))])
    assert unsupported.status_code == 415 and unsupported.json()["error"]["code"] == "unsupported_media_type"
    big = await gateway.post("/v1/corpora/docs/documents",
                             files=[("files", ("big.txt", b"x" * 300_000, "text/plain"))])
    assert big.status_code == 413
    wrong_field = await gateway.post("/v1/corpora/docs/documents",
                                     files=[("file", ("a.txt", b"hello", "text/plain"))])
    assert wrong_field.status_code == 400 and wrong_field.json()["error"]["param"] == "file"
    bad_json = await gateway.post("/v1/corpora/docs/documents", json={"documents": [{"txt": "x"}]})
    assert bad_json.status_code == 400
    not_json = await gateway.post("/v1/corpora/docs/documents", content=b"{oops",
                                  headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert (await gateway.post("/v1/corpora/nope/documents", json={"documents": [{"text": "x"}]})).status_code == 404

    hostile = await upload(gateway, "docs", [("../../etc/passwd.txt", b"Tardigrades survive in space.",
                                              "text/plain")])
    assert hostile["status"] == "succeeded"
    hit = (await search(gateway, "docs", "tardigrades space", "bm25"))[0]
    assert hit["document_id"] == "passwd.txt"  # the name is metadata, never a path

    assert (await search(gateway, "docs", "transparent skin frogs", "bm25"))[0]["document_id"] == "keep.txt"
    assert (await gateway.get("/healthz")).status_code == 200


async def test_corpus_validation_errors(gateway):
    ok = await gateway.post("/v1/corpora", json={"name": "one"})
    assert ok.status_code == 201
    for body, status in [({"name": "one"}, 409), ({"name": "../x"}, 400), ({"name": ""}, 400),
                         ({"name": "two", "chunk_size": 32, "chunk_overlap": 32}, 400),
                         ({"name": "two", "embedding_model": "/nope/model"}, 400),
                         ({"name": "two", "colour": "red"}, 400)]:
        response = await gateway.post("/v1/corpora", json=body)
        assert response.status_code == status, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    for bad in ({"query": "", "k": 5}, {"query": "x", "k": 0}, {"query": "x", "mode": "magic"}):
        assert (await gateway.post("/v1/corpora/one/search", json=bad)).status_code == 400
    assert (await gateway.post("/v1/corpora/none/search", json={"query": "x"})).status_code == 404
    assert (await gateway.get("/v1/jobs/123")).status_code == 404
    empty = await search(gateway, "one", "anything at all")
    assert empty == []
    assert json.loads((await gateway.get("/v1/corpora")).text)["data"][0]["name"] == "one"


async def test_gateways_sharing_the_data_follow_each_others_generations(make_settings, fake_engine):
    """Two replicas on one database and index folder: each serves what the other published."""
    first, second = make_settings(engine_urls=[fake_engine.url]), make_settings(engine_urls=[fake_engine.url])
    assert first.data_dir == second.data_dir and first.port != second.port
    async with running_gateway(first) as url_a, running_gateway(second) as url_b, \
            client(url_a) as a, client(url_b) as b:
        assert (await a.post("/v1/corpora", json={"name": "shared"})).status_code == 201
        assert await search(b, "shared", "otters") == []  # b loads the empty corpus

        job = await upload(a, "shared", [("otters.txt", b"Sea otters hold hands while they sleep.", "text/plain")])
        assert job["status"] == "succeeded"
        assert [h["document_id"] for h in await search(b, "shared", "otters sleep")] == ["otters.txt"]

        job = await upload(b, "shared", [("koalas.txt", b"Koalas sleep up to 22 hours a day.", "text/plain")])
        assert job["status"] == "succeeded"  # built on a's generation, which b followed
        for http in (a, b):
            assert {h["document_id"] for h in await search(http, "shared", "sleep", k=5)} == {"otters.txt", "koalas.txt"}
            assert (await http.get("/v1/corpora/shared")).json()["generation"] == 2

        deleted = await a.delete("/v1/corpora/shared/documents/otters.txt")
        assert deleted.status_code == 200, deleted.text
        assert [h["document_id"] for h in await search(b, "shared", "sleep", k=5)] == ["koalas.txt"]
