"""A real `graft serve` is SIGKILLed in the middle of an ingestion job and restarted.

The corpus must keep answering from its last committed generation right after the restart,
the interrupted (and the queued) job must be resumed, and every document whose upload got a
202 must end up searchable; no half-written generation folder may survive. What a kill during
the generation write would leave (a tmp-* folder, a renamed generation SQL never pointed at) is
planted before the restart, since the kill itself lands while the job is embedding.

No vLLM is needed: GRAFT_ENGINE_URLS points at a port nobody listens on, so the gateway runs
without an engine (/readyz says not ready; /healthz is used to wait).
"""

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from indexer.generation import temp_name
from tests.harness import free_port

FIRST_BATCH = 20
SECOND_BATCH = (100, 40)  # two uploads: the first is killed while running, the second is queued
WORDS = """river mountain lantern copper violet harbor meadow thunder quartz saddle orchard
pepper glacier falcon marble ribbon canyon velvet compass ember willow beacon timber cobalt
lagoon prairie saffron granite whistle nectar basalt juniper tundra pewter monsoon cedar
spindle harvest crimson pylon sonnet tapestry drizzle almanac bramble cinder dune estuary
fjord gravel hollow isthmus jasmine kettle ledger mosaic nimbus obsidian parchment quiver
rampart sapphire trellis umber vapor wharf yarrow zephyr anchor bellows cistern dynamo
engine ferry gazette hinge igloo jigsaw kiln loom mantle nozzle oyster paddle quarry
rudder siphon turbine urchin valve windmill yeoman zither acorn badger chisel dormouse
egret fennel gadfly heron ibis jackal kestrel lemur marten newt ocelot plover quail raven
stoat tapir vole walrus yak zebu archive bridge castle district empire festival garden
harbour island journey kingdom library market observatory palace quarter railway station
theatre university village warehouse""".split()
VERBS = """carries paints measures follows gathers repairs watches builds crosses hides
counts lifts polishes plants sorts guards mends trades weaves names""".split()


def _document(index: int, rng: random.Random, words: int) -> dict:
    sentences, count = [], 0
    while count < words:
        n = rng.randint(7, 14)
        picked = [rng.choice(WORDS) for _ in range(n)]
        picked.insert(rng.randint(1, n - 1), rng.choice(VERBS))
        sentences.append(" ".join(picked).capitalize() + ".")
        count += n + 1
    sentences.insert(rng.randint(0, len(sentences)), f"The registry code of this note is marker-{index:04d}.")
    return {"id": f"doc-{index:04d}", "text": " ".join(sentences), "metadata": {"n": index}}


def _documents(start: int, count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [_document(i, rng, rng.randint(150, 220)) for i in range(start, start + count)]


class Server:
    """`python -m service serve` in its own process group, output to a log file."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log_path = env, log
        self.url = f"http://127.0.0.1:{env['GRAFT_PORT']}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited early:\n{self.tail()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve did not answer /healthz in {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (server and any child), and check nothing survives."""
        pgid = self.process.pid  # start_new_session: the server leads its own group
        os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _group_alive(pgid):
            assert time.monotonic() < deadline, f"processes of group {pgid} survived SIGKILL"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=30)
            raise AssertionError(f"serve did not stop on SIGINT within 60s:\n{self.tail()}")
        finally:
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie still counts for killpg; only live members matter.
    out = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True).stdout
    return any(int(p) == pgid and not s.startswith("Z") for p, s in (line.split() for line in out.splitlines()))


@pytest.fixture
def env(tmp_path, base_model_dir):
    dead_engine = free_port()  # bound by nobody: the corpora API needs no engine
    env = dict(os.environ, GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_BASE_MODEL=str(base_model_dir),
               GRAFT_PORT=str(free_port()), GRAFT_ENGINE_URLS=f"http://127.0.0.1:{dead_engine}",
               GRAFT_EMBEDDING_BATCH_SIZE="16",  # progress (chunks_done) every 64 chunks
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, "-m", "service", "db", "upgrade"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return env


def _temp_leftovers(indexes: Path) -> list[str]:
    """Names only an unfinished write has: tmp-* (generation.py), .<name>.tmp-* (durable.py, lexical.py)."""
    return sorted(str(p.relative_to(indexes)) for p in indexes.rglob("*")
                  if p.name.startswith("tmp-") or ".tmp-" in p.name)


def _plant_interrupted_publish(corpus_dir: Path, killed_pid: int) -> list[Path]:
    """Leave what a kill in the middle of publishing generation 2 would: a temp folder of the killed
    process with a half-written file, and a gen-00000002 that SQL never pointed at (garbled, so
    using it shows)."""
    vectors = (corpus_dir / "gen-00000001" / "vectors.faiss").read_bytes()
    tmp = corpus_dir / temp_name(pid=killed_pid)
    tmp.mkdir()
    (tmp / f".vectors.faiss.tmp-{uuid.uuid4().hex}").write_bytes(vectors[:len(vectors) // 2])
    uncommitted = corpus_dir / "gen-00000002"
    uncommitted.mkdir()
    (uncommitted / "vectors.faiss").write_bytes(b"not a faiss index")
    (uncommitted / "manifest.json").write_text("{")
    return [tmp, uncommitted]


def _wait_job(http: httpx.Client, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def _bm25_top(http: httpx.Client, query: str) -> str | None:
    response = http.post("/v1/corpora/crash/search", json={"query": query, "k": 1, "mode": "bm25"})
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    return hits[0]["document_id"] if hits else None


def _all_document_ids(http: httpx.Client) -> list[str]:
    ids, after = [], None
    while True:
        page = http.get("/v1/corpora/crash/documents",
                        params={"limit": 1000, **({"after": after} if after else {})}).json()
        ids += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            return ids
        after = ids[-1]


def test_sigkill_during_ingestion_then_restart(env, tmp_path):
    data = Path(env["GRAFT_DATA_DIR"])
    server = Server(env, tmp_path / "serve.log")
    first = _documents(0, FIRST_BATCH, seed=1)
    second = [_documents(FIRST_BATCH, SECOND_BATCH[0], seed=2),
              _documents(FIRST_BATCH + SECOND_BATCH[0], SECOND_BATCH[1], seed=3)]
    accepted = list(first)
    try:
        server.start()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            # No engine: completions are not ready, but nothing about corpora needs one.
            assert http.get("/readyz").status_code == 503
            assert http.post("/v1/corpora", json={"name": "crash"}).status_code == 201
            response = http.post("/v1/corpora/crash/documents", json={"documents": first})
            assert response.status_code == 202, response.text
            assert _wait_job(http, response.json()["job_id"], 120)["status"] == "succeeded"
            assert http.get("/v1/corpora/crash").json()["generation"] == 1
            assert _bm25_top(http, "marker-0007") == "doc-0007"

            job_ids = []
            for batch in second:
                response = http.post("/v1/corpora/crash/documents", json={"documents": batch})
                assert response.status_code == 202, response.text
                accepted += batch
                job_ids.append(response.json()["job_id"])

            deadline = time.monotonic() + 120
            while True:
                job = http.get(f"/v1/jobs/{job_ids[0]}").json()
                assert job["status"] in ("queued", "running"), f"job ended before the kill: {job}"
                if job["status"] == "running" and job["progress"]["chunks_done"] > 0:
                    break
                assert time.monotonic() < deadline, f"job never made progress: {job}"
                time.sleep(0.05)
        seen = job["progress"]
        server.kill()
        print(f"SIGKILL at {seen}")
        assert seen["chunks_done"] < seen["chunks_total"]
        [corpus_dir] = (data / "indexes").iterdir()
        assert [p.name for p in corpus_dir.iterdir()] == ["gen-00000001"]  # killed before any write
        planted = _plant_interrupted_publish(corpus_dir, server.process.pid)

        restarted = time.monotonic()
        server.start()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            # Right away: the last committed generation answers (the job runs in the background).
            before = http.get("/v1/corpora/crash").json()
            assert before["generation"] is not None and before["generation"] >= 1
            assert _bm25_top(http, "marker-0007") == "doc-0007"
            hybrid = http.post("/v1/corpora/crash/search", json={"query": "registry code marker-0013", "k": 5})
            assert hybrid.status_code == 200 and "doc-0013" in [h["document_id"] for h in hybrid.json()["hits"]]
            late = f"doc-{FIRST_BATCH + 3:04d}"  # in the interrupted job
            top = _bm25_top(http, late.replace("doc-", "marker-"))
            after = http.get("/v1/corpora/crash").json()
            if before["generation"] == after["generation"] == 1:  # still the pre-crash generation
                assert top != late, "a document of the unfinished job is searchable at generation 1"
            tmp, uncommitted = planted
            assert not tmp.exists(), "start-up kept the temp folder of an interrupted write"
            # The generation SQL never pointed at may stay until the next write replaces it (at start-up
            # it could be another gateway's, about to commit); nothing reads it: searches answered above.
            print(f"answering {time.monotonic() - restarted:.1f}s after the restart: generation "
                  f"{after['generation']}, job {http.get(f'/v1/jobs/{job_ids[0]}').json()['status']}")

            for job_id in job_ids:
                job = _wait_job(http, job_id, 240)
                assert job["status"] == "succeeded", job
                assert job["progress"]["chunks_done"] == job["progress"]["chunks_total"] > 0

            stats = http.get("/v1/corpora/crash").json()
            print(f"jobs done {time.monotonic() - restarted:.1f}s after the restart: {stats['documents']} "
                  f"documents, {stats['chunks']} chunks, generation {stats['generation']}")
            assert stats["documents"] == len(accepted)
            assert sorted(_all_document_ids(http)) == sorted(d["id"] for d in accepted)
            lost = [d["id"] for d in accepted if _bm25_top(http, d["id"].replace("doc-", "marker-")) != d["id"]]
            assert lost == [], f"accepted documents not searchable: {lost}"
            print(f"all {len(accepted)} found {time.monotonic() - restarted:.1f}s after the restart")

        assert _temp_leftovers(data / "indexes") == []
        # The uncommitted generation 2 was replaced by the resumed job's, then removed as superseded.
        assert [p.name for p in corpus_dir.iterdir()] == [f"gen-{stats['generation']:08d}"]
        assert stats["generation"] >= 2
        # Each document keeps its raw upload (for index rebuilds), and nothing else is left.
        assert len([p for p in (data / "uploads").rglob("*") if p.is_file()]) == stats["documents"]
    except BaseException:
        print(server.tail(80))
        raise
    finally:
        server.stop()
    assert server.process.returncode in (0, 130), server.tail()
