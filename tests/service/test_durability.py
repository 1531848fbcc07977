"""A 2xx means the data is on disk: every file SQL points at was fsynced, and so was every folder
entry that leads to it, before the commit that points at it; and that commit came before the answer.

An fsync spy (os.fsync, which every durable write of graft goes through: training/durable.py
and the upload streamer) records, at each fsync, what it makes durable: for a file its size and
mtime (so a write after the fsync shows), for a folder its entries (name → inode, so a rename
after the fsync shows). At each SQL commit a listener reads every path SQL then references (raw
uploads of job items and documents, the current index generation of each corpus, adapter versions)
and checks each one the first time it appears: each file under it fsynced since its last write,
and each folder entry on the way to it (from the data folder the gateway made at start-up down)
present in an fsync of that folder. An ASGI wrapper logs each answer. So the order
write → fsync file → rename → fsync folder → commit → 2xx is checked for corpus uploads (multipart
and JSON), index generations and adapter versions alike; dropping any one fsync fails the test.
"""

import itertools
import os
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from adapters_store.models import AdapterVersion, Corpus, Document, IndexGeneration, JobItem
from tests.harness import client, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job


class DurabilitySpy:
    def __init__(self, roots: list[Path]):
        self.roots = [Path(r) for r in roots]  # folders made at start-up: checks stop there
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self.file_syncs: dict[tuple[int, int], set[tuple[int, int]]] = {}  # (dev, ino) → {(size, mtime_ns)}
        self.dir_syncs: dict[tuple[int, int], set[tuple[str, int]]] = {}  # (dev, ino) → {(name, ino)}
        self.first_commit: dict[str, int] = {}  # path → seq of the first commit that referenced it
        self.checked_files: dict[str, int] = {}  # path → files checked under it
        self.problems: list[str] = []
        self.responses: list[tuple[int, str, str, int]] = []  # (seq, method, path, status)
        self.fsyncs = 0

    # -- the spy on os.fsync -------------------------------------------------------------------
    def wrap_fsync(self, real_fsync):
        def fsync(fd: int) -> None:
            info = os.fstat(fd)  # before the real fsync: what it records is surely covered by it
            key = (info.st_dev, info.st_ino)
            if stat.S_ISDIR(info.st_mode):
                entries = set()
                for name in os.listdir(fd):
                    try:
                        entries.add((name, os.stat(name, dir_fd=fd, follow_symlinks=False).st_ino))
                    except FileNotFoundError:
                        pass
                with self._lock:
                    self.dir_syncs.setdefault(key, set()).update(entries)
            else:
                with self._lock:
                    self.file_syncs.setdefault(key, set()).add((info.st_size, info.st_mtime_ns))
            with self._lock:
                self.fsyncs += 1
            return real_fsync(fd)
        return fsync

    # -- at each commit ------------------------------------------------------------------------
    def after_commit(self, session: Session) -> None:
        try:
            with session.get_bind().connect() as conn:
                paths = set(conn.scalars(select(JobItem.raw_path)))
                paths |= set(conn.scalars(select(Document.raw_path).where(Document.raw_path.is_not(None))))
                paths |= set(conn.scalars(select(IndexGeneration.path).join(
                    Corpus, (Corpus.id == IndexGeneration.corpus_id)
                    & (Corpus.current_generation == IndexGeneration.number))))
                paths |= set(conn.scalars(select(AdapterVersion.path).where(AdapterVersion.deleted.is_(False))))
            with self._lock:
                seq = next(self._seq)
                new = sorted(paths - self.first_commit.keys())
                for path in new:
                    self.first_commit[path] = seq
                    self.problems += [f"commit {seq}: {problem}" for problem in self._check(Path(path))]
        except Exception as exc:  # never break the gateway; fail the test instead
            self.problems.append(f"the commit check itself failed: {exc!r}")

    def _check(self, path: Path) -> list[str]:
        root = next((r for r in self.roots if r in path.parents), None)
        if root is None:
            return [f"{path}: not under a data folder {self.roots}"]
        if not path.exists():
            return [f"{path}: referenced by SQL but not on disk"]
        under = sorted(path.rglob("*")) if path.is_dir() else []
        problems, files = [], 0
        for target in [path, *under]:
            info = target.lstat()
            if stat.S_ISREG(info.st_mode):
                files += 1
                if (info.st_size, info.st_mtime_ns) not in self.file_syncs.get((info.st_dev, info.st_ino), ()):
                    problems.append(f"{target}: content not fsynced since its last write")
        self.checked_files[str(path)] = files
        for entry in [*under, path, *(a for a in path.parents if root in a.parents)]:
            folder = entry.parent.lstat()
            if (entry.name, entry.lstat().st_ino) not in self.dir_syncs.get((folder.st_dev, folder.st_ino), ()):
                problems.append(f"{entry}: its entry in {entry.parent} not fsynced since it was made")
        return problems

    # -- answers -------------------------------------------------------------------------------
    def wrap_app(self, app):
        async def watched(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)

            async def send_and_log(message):
                if message["type"] == "http.response.start":
                    with self._lock:
                        self.responses.append((next(self._seq), scope["method"], scope["path"], message["status"]))
                await send(message)

            await app(scope, receive, send_and_log)
        return watched

    def answers(self, method: str, path: str, status: int) -> list[int]:
        return [seq for seq, m, p, s in self.responses if (m, p, s) == (method, path, status)]


@pytest.fixture
async def watched(make_settings, fake_engine, monkeypatch):
    settings = make_settings(engine_urls=[fake_engine.url])
    spy = DurabilitySpy([settings.uploads_dir, settings.indexes_dir, settings.adapters_dir / "store"])
    monkeypatch.setattr(os, "fsync", spy.wrap_fsync(os.fsync))
    event.listen(Session, "after_commit", spy.after_commit)
    try:
        async with running_gateway(settings, wrap=spy.wrap_app) as url, client(url) as http:
            yield spy, http, settings
    finally:
        event.remove(Session, "after_commit", spy.after_commit)


def item_paths(settings, job_id: str) -> list[str]:
    from adapters_store.db import make_engine

    db = make_engine(settings.resolved_database_url)
    try:
        with db.connect() as conn:
            return list(conn.scalars(select(JobItem.raw_path).where(JobItem.job_id == job_id)))
    finally:
        db.dispose()


async def test_uploads_generations_and_adapter_versions_are_fsynced_before_commit_and_answer(watched, good_lora):
    spy, http, settings = watched
    multipart = [("files", ("otters.txt", b"Sea otters hold hands asleep.", "text/plain")),
                 ("files", ("koalas.md", b"# Koalas\n\nKoalas sleep all day.", "text/markdown"))]
    json_docs = {"documents": [{"id": "frogs", "text": "Glass frogs are transparent."}]}
    # Each kind of upload both into a corpus's first upload folder and into an existing one.
    plan = [("docs", "files", multipart), ("docs", "json", json_docs), ("notes", "json", json_docs),
            ("notes", "files", multipart)]
    for corpus in ("docs", "notes"):
        assert (await http.post("/v1/corpora", json={"name": corpus})).status_code == 201
    for corpus, kind, body in plan:
        documents = f"/v1/corpora/{corpus}/documents"
        upload = await (http.post(documents, files=body) if kind == "files" else http.post(documents, json=body))
        assert upload.status_code == 202, upload.text
        answer_seq = spy.answers("POST", documents, 202)[-1]
        raw = item_paths(settings, upload.json()["job_id"])
        assert raw and all(spy.first_commit.get(p, answer_seq) < answer_seq for p in raw), (
            "the 202 went out before the commit that records the upload", raw, spy.first_commit, answer_seq)
        assert (await wait_job(http, upload.json()["job_id"]))["status"] == "succeeded"
    assert [(await http.get(f"/v1/corpora/{c}")).json()["generation"] for c in ("docs", "notes")] == [2, 2]
    generation_dirs = sorted(p for p in spy.first_commit if Path(p).name.startswith("gen-"))
    assert [Path(p).name for p in generation_dirs] == ["gen-00000001", "gen-00000002"] * 2
    assert all(spy.checked_files[p] >= 3 for p in generation_dirs), spy.checked_files  # faiss, lexical, manifest

    adapter = await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))
    assert adapter.status_code == 201, adapter.text
    [answer_seq] = spy.answers("POST", "/v1/adapters/tone/versions", 201)
    [version_dir] = [p for p in spy.first_commit if Path(p).name == adapter.json()["sha256"]]
    assert spy.first_commit[version_dir] < answer_seq and spy.checked_files[version_dir] == 2

    hits = (await http.post("/v1/corpora/notes/search", json={"query": "transparent frogs", "mode": "bm25"})).json()
    assert hits["hits"][0]["document_id"] == "frogs"
    assert spy.fsyncs > 0
    assert spy.problems == [], "\n".join(spy.problems)
