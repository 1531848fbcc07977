"""Retrieval quality on a real documentation set nobody here wrote: Debian's git-doc HTML pages.

A fixed subset of the `git-*.html` command pages (the targets of the questions, commands that
compete with them, and small pages as noise) is uploaded through the REST API as multipart
files, then questions in plain words must find their page in the top 5 hits. The subset is
fixed so the test is deterministic and stays fast on a CPU (about 45 pages, ~600 chunks).
No engine is needed: the gateway points at a port nobody listens on.

`make test` installs the `git-doc` package; without it this test fails (it does not skip).
"""

import asyncio
import time
from pathlib import Path

import pytest

from bench.git_doc_questions import PAGES
from bench.git_doc_questions import QUESTIONS as ALL_QUESTIONS
from tests.harness import client, free_port, running_gateway

GIT_DOC = Path("/usr/share/doc/git-doc")

# The first 13 questions of the wider set that bench/eval.py scores, each with its one page.
QUESTIONS = [(question, pages[0]) for question, pages, _ in ALL_QUESTIONS[:13]]
TOP = 5


def git_doc_pages() -> list[Path]:
    if not GIT_DOC.is_dir():
        pytest.fail(f"{GIT_DOC} is missing: install Debian's git-doc package "
                    "(apt-get install git-doc; `make test` does it as root)", pytrace=False)
    paths = [GIT_DOC / name for name in PAGES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"git-doc is installed but lacks {', '.join(missing)} in {GIT_DOC}", pytrace=False)
    return paths


@pytest.fixture
async def gateway(make_settings):
    settings = make_settings(engine_urls=[f"http://127.0.0.1:{free_port()}"])
    async with running_gateway(settings) as url:
        async with client(url, timeout=300) as http:
            yield http


async def wait_job(http, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


async def test_git_doc_questions_find_their_page(gateway):
    paths = git_doc_pages()
    assert (await gateway.post("/v1/corpora", json={"name": "git-doc"})).status_code == 201

    started = time.monotonic()
    response = await gateway.post("/v1/corpora/git-doc/documents", files=[
        ("files", (path.name, path.read_bytes(), "text/html")) for path in paths])
    assert response.status_code == 202, response.text
    job = await wait_job(gateway, response.json()["job_id"], timeout=600)
    ingest_s = time.monotonic() - started
    assert job["status"] == "succeeded" and job["errors"] == [], job
    stats = (await gateway.get("/v1/corpora/git-doc")).json()
    assert stats["documents"] == len(PAGES)
    print(f"\ngit-doc: {len(PAGES)} pages, {stats['chunks']} chunks ingested in {ingest_s:.1f}s "
          f"({stats['chunks'] / ingest_s:.1f} chunks/s)")

    rates, misses = {}, {}
    for mode in ("dense", "bm25", "hybrid"):
        found = 0
        for question, page in QUESTIONS:
            response = await gateway.post("/v1/corpora/git-doc/search",
                                          json={"query": question, "k": TOP, "mode": mode})
            assert response.status_code == 200, response.text
            documents = [hit["document_id"] for hit in response.json()["hits"]]
            if page in documents:
                found += 1
            else:
                misses.setdefault(mode, []).append(f"{question!r} → {page}, got {documents}")
        rates[mode] = found / len(QUESTIONS)
    print("hit@5: " + ", ".join(f"{mode} {rate:.0%}" for mode, rate in rates.items()))
    for mode, lines in misses.items():
        print(f"{mode} misses:\n  " + "\n  ".join(lines))

    assert "hybrid" not in misses, "hybrid search missed:\n" + "\n".join(misses["hybrid"])
    # Each retriever alone is weaker; a floor still catches a broken one.
    assert rates["dense"] >= 0.8 and rates["bm25"] >= 0.7, rates

    # k=1 must give the first of the k=5 hits: the fusion's candidate lists do not shrink with k.
    hit = (await gateway.post("/v1/corpora/git-doc/search",
                              json={"query": QUESTIONS[0][0], "k": 1})).json()["hits"][0]
    assert hit["metadata"]["filename"] == hit["document_id"] == "git-bisect.html"
    assert hit["metadata"]["content_type"] == "text/html" and "bisect" in hit["metadata"]["title"]
