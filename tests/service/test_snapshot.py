"""Backups (`graft snapshot create|restore`, service/snapshot.py): a snapshot taken while uploads and
swaps run restores into an empty folder as a consistent gateway; one taken once they stop restores
to the same searches, documents, bindings and adapter versions; a damaged archive or a used folder
is refused. On SQLite and on PostgreSQL (pg_dump inside the transaction that listed the files).

Real embedder, FAISS, BM25 and database; the engine is the fake one.
"""

import asyncio
import io
import tarfile
from contextlib import nullcontext
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from adapters_store.models import AdapterVersion
from service import snapshot
from service.cli import app as cli
from service.settings import Settings
from tests.conftest import fresh_postgres_database
from tests.harness import client, free_port, running_gateway
from tests.service.test_adapters_engine import adapter_files
from tests.service.test_corpora_api import wait_job

pytestmark = pytest.mark.databases("sqlite", "postgresql")

BOOT = "boot-admin"
TOKENS = ["quenmoor", "zorblax", "vantress", "elira", "tarrowind"]


async def state_of(http) -> dict:
    """What a restore must give back: documents, each token's search, bindings, adapter versions."""
    documents = (await http.get("/v1/corpora/lore/documents", params={"limit": 1000})).json()["data"]
    searches = {}
    for token in TOKENS:
        hits = (await http.post("/v1/corpora/lore/search", json={"query": token, "k": 3, "mode": "bm25"})).json()["hits"]
        searches[token] = [(h["document_id"], h["text"]) for h in hits]
    versions = (await http.get("/v1/adapters/tone/versions")).json()["data"]
    return {"documents": [(d["id"], d["sha256"], d["chunks"]) for d in documents], "searches": searches,
            "domain": (await http.get("/v1/domains/lore")).json()["engine_model"],
            "versions": [(v["version"], v["sha256"]) for v in versions]}


def restored_settings(tmp_path: Path, name: str, template: Settings, database_url: str | None) -> Settings:
    return Settings(data_dir=tmp_path / name, base_model=template.base_model, port=free_port(),
                    engine_urls=template.engine_urls, api_keys=[BOOT],
                    embedding_cache_dir=template.embedding_cache_dir, database_url=database_url)


def assert_adapter_files_restored(settings: Settings) -> None:
    engine = create_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            paths = [Path(p) for p in session.scalars(select(AdapterVersion.path).where(AdapterVersion.deleted.is_(False)))]
    finally:
        engine.dispose()
    assert paths and all(p.is_relative_to(settings.data_dir.resolve()) and (p / "adapter_config.json").is_file()
                         for p in paths), paths


async def test_a_snapshot_under_load_restores_consistent_and_a_quiet_one_the_same(
        make_settings, fake_engine, good_lora, tmp_path, database_url, request):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    archive_busy, archive_quiet = tmp_path / "busy.tar", tmp_path / "quiet.tar"
    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        assert (await boot.post("/v1/corpora", json={"name": "lore"})).status_code == 201
        job = (await boot.post("/v1/corpora/lore/documents", json={"documents": [
            {"id": t, "text": f"The word {t} appears in this document only."} for t in TOKENS]})).json()
        assert (await wait_job(boot, job["job_id"]))["status"] == "succeeded"
        for _ in (1, 2):
            assert (await boot.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))).status_code == 201
        assert (await boot.put("/v1/domains/lore", json={"corpora": ["lore"],
                                                          "adapter": {"name": "tone", "version": 1}})).status_code == 201
        stop = asyncio.Event()

        async def load() -> int:
            rounds = 0
            while not stop.is_set():
                rounds += 1
                job = (await boot.post("/v1/corpora/lore/documents", json={"documents": [
                    {"id": "churn", "text": f"Churning document, round {rounds}."}]})).json()
                await wait_job(boot, job["job_id"])
                swapped = await boot.post("/v1/domains/lore/adapter", json={"adapter": "tone", "version": 1 + rounds % 2})
                assert swapped.status_code == 200, swapped.text
            return rounds

        loader = asyncio.create_task(load())
        made = await asyncio.to_thread(snapshot.create, settings, archive_busy)
        stop.set()
        assert await loader >= 1
        assert made.corpora == 1 and made.adapter_versions == 2
        source = await state_of(boot)
        made = await asyncio.to_thread(CliRunner().invoke, cli, ["snapshot", "create", str(archive_quiet)],
                                       env={"GRAFT_DATA_DIR": str(settings.data_dir),
                                            **({"GRAFT_DATABASE_URL": database_url} if database_url else {})})
        assert made.exit_code == 0, made.output

    postgres = request.getfixturevalue("postgres_url") if database_url else None
    for archive, name in ((archive_quiet, "quiet"), (archive_busy, "busy")):
        # SQLite: the restored database lives in the new data folder
        with (fresh_postgres_database(postgres) if postgres else nullcontext()) as url_of_copy:
            target = restored_settings(tmp_path, name, settings, url_of_copy)
            await asyncio.to_thread(snapshot.restore, target, archive)
            assert_adapter_files_restored(target)
            async with running_gateway(target) as url, client(url, BOOT) as restored:
                state = await state_of(restored)
                if archive is archive_quiet:
                    assert state == source
                else:  # some moment of the load: every document it lists is searchable, its binding serves
                    ids = {d[0] for d in state["documents"]}
                    assert set(TOKENS) <= ids
                    assert all(state["searches"][t][0][0] == t for t in TOKENS)
                    assert state["domain"] in ("tone@1", "tone@2")
                answer = await restored.post("/v1/chat/completions", json={
                    "model": "lore", "messages": [{"role": "user", "content": "Where does quenmoor appear?"}]})
                assert answer.status_code == 200 and answer.json()["citations"], answer.text


async def test_a_damaged_archive_or_a_used_folder_is_refused(make_settings, fake_engine, tmp_path, database_url):
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[BOOT])
    async with running_gateway(settings) as url, client(url, BOOT) as boot:
        assert (await boot.post("/v1/corpora", json={"name": "lore"})).status_code == 201
        job = (await boot.post("/v1/corpora/lore/documents", json={"documents": [{"text": "Some text."}]})).json()
        assert (await wait_job(boot, job["job_id"]))["status"] == "succeeded"
    archive = tmp_path / "s.tar"
    await asyncio.to_thread(snapshot.create, settings, archive)
    with pytest.raises(snapshot.SnapshotError, match="exists already"):
        snapshot.create(settings, archive)
    with pytest.raises(snapshot.SnapshotError, match="not empty"):
        snapshot.restore(settings, archive)
    with tarfile.open(archive) as original, tarfile.open(tmp_path / "bad.tar", "w") as damaged:
        for member in original.getmembers():
            data = original.extractfile(member).read()
            if member.name.startswith("data/"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            damaged.addfile(member, io.BytesIO(data))
    target = tmp_path / "fresh"
    with pytest.raises(snapshot.SnapshotError, match="sha256"):
        snapshot.restore(restored_settings(tmp_path, "fresh", settings, None), tmp_path / "bad.tar")
    assert not target.exists() or not any(target.iterdir())  # checked before anything is written
