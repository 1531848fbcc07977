"""Adapter files reach a fleet replica without a shared folder: the gateway serves a version's files to an
admin key, and a replica's fetch checks each file's sha256 and keeps the version in its node's cache.
Also the one rule of replica residency that needs no Ray: an evicted adapter is unloaded only once its
requests are done."""

import asyncio

import pytest

from service.engine.adapter_fetch import AdapterFetchError, local_folder, source_of
from tests.harness import client, running_gateway, until
from tests.service.test_adapters_engine import adapter_files

KEY = "admin-key"


@pytest.fixture
async def stored(make_settings, fake_engine, good_lora):
    """A gateway on the fake engine with adapter `tone` v1; yields (client, its URL, the version's folder)."""
    settings = make_settings(engine_urls=[fake_engine.url], api_keys=[KEY])
    async with running_gateway(settings) as url, client(url, KEY) as http:
        uploaded = await http.post("/v1/adapters/tone/versions", files=adapter_files(good_lora))
        assert uploaded.status_code == 201, uploaded.text
        folder = settings.adapters_dir / "store" / uploaded.json()["sha256"]
        yield http, url, folder


async def test_a_replica_fetches_a_version_over_http_checked_and_cached(stored, tmp_path, good_lora):
    http, url, folder = stored
    source = source_of(folder, f"{url}/v1/adapters/tone/versions/1/files", shared=False)
    assert source["path"] is None and {f["path"] for f in source["files"]} == {
        "adapter_config.json", "adapter_model.safetensors"}

    fetched = await local_folder(source, tmp_path / "cache", KEY)
    assert fetched == tmp_path / "cache" / folder.name
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (fetched / name).read_bytes() == (good_lora / name).read_bytes()
    # Cached: no second download (a wrong key would fail it).
    assert await local_folder(source, tmp_path / "cache", "wrong-key") == fetched
    # A shared folder the node sees is used as it is.
    assert await local_folder(source_of(folder, None), tmp_path / "other", None) == folder


async def test_a_fetched_file_that_does_not_match_its_sha256_is_refused(stored, tmp_path):
    http, url, folder = stored
    source = source_of(folder, f"{url}/v1/adapters/tone/versions/1/files", shared=False)
    source["files"][0]["sha256"] = "0" * 64
    with pytest.raises(AdapterFetchError, match="does not match its sha256"):
        await local_folder(source, tmp_path / "cache", KEY)
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    with pytest.raises(AdapterFetchError, match="401"):
        await local_folder(source_of(folder, source["url"], shared=False), tmp_path / "cache", "wrong-key")


async def test_the_files_route_answers_only_the_versions_files(stored):
    http, url, folder = stored
    ok = await http.get("/v1/adapters/tone/versions/1/files/adapter_config.json")
    assert ok.status_code == 200 and ok.content == (folder / "adapter_config.json").read_bytes()
    for path, status in [("/v1/adapters/tone/versions/1/files/..%2F..%2F..%2Fgraft.db", 404),
                         ("/v1/adapters/tone/versions/1/files/nothing.json", 404),
                         ("/v1/adapters/tone/versions/9/files/adapter_config.json", 404),
                         ("/v1/adapters/nobody/versions/1/files/adapter_config.json", 404),
                         ("/v1/adapters/tone/versions/0/files/adapter_config.json", 400)]:
        answer = await http.get(path)
        assert answer.status_code == status, (path, answer.text)
        assert "error" in answer.json(), answer.text
    async with client(url) as anonymous:
        assert (await anonymous.get("/v1/adapters/tone/versions/1/files/adapter_config.json")).status_code == 401


async def test_an_evicted_adapter_is_unloaded_only_once_its_requests_are_done():
    pytest.importorskip("ray")
    from service.engine.ray_replica import ResidentAdapter

    class Replica:
        unloaded: list[str] = []

        async def unload(self, name: str) -> None:
            self.unloaded.append(name)

    replica = Replica()
    adapter = ResidentAdapter("tone@1", replica)
    adapter.acquire()
    adapter.acquire()
    eviction = asyncio.create_task(adapter.__del__())  # what Serve's LRU awaits
    await asyncio.sleep(0.1)
    adapter.release()
    await asyncio.sleep(0.1)
    assert replica.unloaded == [] and not eviction.done()
    adapter.release()
    await until(lambda: replica.unloaded == ["tone@1"], "the adapter to be unloaded")
    await eviction
