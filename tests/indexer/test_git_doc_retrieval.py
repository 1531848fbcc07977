"""Retrieval quality on a real documentation set nobody here wrote: Debian's git-doc HTML pages.

A fixed subset of the `git-*.html` command pages (the targets of the questions, commands that
compete with them, and small pages as noise) is uploaded through the REST API as multipart
files, then questions in plain words must find their page in the top 5 hits. The subset is
fixed so the test is deterministic and stays fast on a CPU (about 45 pages, ~600 chunks).

`.ci/run` installs the `git-doc` package; without it this test fails (it does not skip).
"""

import asyncio
import time
from pathlib import Path

import pytest

from tests.fake_engine import FakeEngine
from tests.harness import client, running_gateway

GIT_DOC = Path("/usr/share/doc/git-doc")

PAGES = [f"git-{name}.html" for name in """
annotate apply archive bisect blame bundle check-mailmap cherry cherry-pick citool clean clone
commit count-objects describe fetch grep hash-object init mktree mv name-rev prune reflog remote
request-pull rebase rerere reset restore revert rm show-branch stage stash switch tag var
verify-commit verify-tag version whatchanged worktree write-tree""".split()]

# Questions in plain words (not the page's own synopsis line) → the page that answers them.
QUESTIONS = [
    ("find the commit that introduced a bug with binary search", "git-bisect.html"),
    ("temporarily save uncommitted changes and restore them later", "git-stash.html"),
    ("apply the changes introduced by some existing commits", "git-cherry-pick.html"),
    ("show who last modified each line of a file", "git-blame.html"),
    ("record changes to the repository", "git-commit.html"),
    ("reapply commits on top of another base tip", "git-rebase.html"),
    ("download objects and refs from another repository", "git-fetch.html"),
    ("copy an existing repository into a new directory", "git-clone.html"),
    ("create a new commit that undoes the changes made by an earlier commit", "git-revert.html"),
    ("remove untracked files from the working tree", "git-clean.html"),
    ("check out more than one branch at the same time in separate directories", "git-worktree.html"),
    ("create a tar or zip archive of the files of a tree", "git-archive.html"),
    ("print lines matching a pattern in tracked files", "git-grep.html"),
    ("move or rename a file or a directory", "git-mv.html"),
    ("reuse a recorded resolution of conflicted merges", "git-rerere.html"),
]
TOP = 5


def git_doc_pages() -> list[Path]:
    if not GIT_DOC.is_dir():
        pytest.fail(f"{GIT_DOC} is missing: install Debian's git-doc package "
                    "(apt-get install git-doc; `.ci/run` does it)", pytrace=False)
    paths = [GIT_DOC / name for name in PAGES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"git-doc is installed but lacks {', '.join(missing)} in {GIT_DOC}", pytrace=False)
    return paths


@pytest.fixture
async def gateway(make_settings):
    settings = make_settings(engine_urls=["http://fake-engine"])
    async with running_gateway(settings, engine_transport=FakeEngine().transport()) as url:
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
    assert rates["dense"] >= 0.6 and rates["bm25"] >= 0.6, rates

    hit = (await gateway.post("/v1/corpora/git-doc/search",
                              json={"query": QUESTIONS[0][0], "k": 1})).json()["hits"][0]
    assert hit["metadata"]["filename"] == hit["document_id"] == "git-bisect.html"
    assert hit["metadata"]["content_type"] == "text/html" and "bisect" in hit["metadata"]["title"]
