"""The hot-loader and reconciler against a fake AdapterHost of two engines (the real pool is
exercised through the gateway in tests/service)."""

import asyncio

import pytest

from adapters_store.hotload import AdapterHost, HotLoader, HotLoadError
from adapters_store.reconciler import Reconciler


class FakeHost:
    """Two engines in memory; `held` is what each engine itself holds."""

    def __init__(self, engines=("a", "b")):
        self.held: dict[str, set[str]] = {e: set() for e in engines}
        self.recorded: dict[str, set[str]] = {e: set() for e in engines}
        self.healthy = set(engines)
        self.failing_loads: set[tuple[str, str]] = set()
        self.running: dict[str, int] = {}
        self.warmed: list[tuple[str, str]] = []

    def healthy_engines(self):
        return sorted(self.healthy)

    def ready_engines(self):
        return sorted(self.healthy)

    def holds(self, engine, name):
        return name in self.recorded[engine]

    async def load(self, engine, name, path):
        if (engine, name) in self.failing_loads:
            raise RuntimeError("engine refused the adapter")
        self.held[engine].add(name)
        self.recorded[engine].add(name)

    async def unload(self, engine, name):
        self.held[engine].discard(name)
        self.recorded[engine].discard(name)

    async def warm_up(self, engine, name):
        self.warmed.append((engine, name))

    async def refresh(self, engine):
        self.recorded[engine] = set(self.held[engine])
        return set(self.held[engine])

    def in_flight(self, name):
        return self.running.get(name, 0)


def test_the_fake_is_an_adapter_host():
    assert isinstance(FakeHost(), AdapterHost)


async def test_load_everywhere_loads_and_warms_on_every_engine():
    host = FakeHost()
    await HotLoader(host).load_everywhere("tone@1", "/x")
    assert host.held == {"a": {"tone@1"}, "b": {"tone@1"}}
    assert host.warmed == [("a", "tone@1"), ("b", "tone@1")]


async def test_a_failure_on_the_second_engine_unloads_from_the_first():
    host = FakeHost()
    host.failing_loads.add(("b", "tone@1"))
    with pytest.raises(HotLoadError):
        await HotLoader(host).load_everywhere("tone@1", "/x")
    assert host.held == {"a": set(), "b": set()}


async def test_a_version_already_held_is_not_unloaded_by_a_failed_load():
    host = FakeHost()
    await host.load("a", "tone@1", "/x")
    host.failing_loads.add(("b", "tone@1"))
    with pytest.raises(HotLoadError):
        await HotLoader(host).load_everywhere("tone@1", "/x")
    assert host.held["a"] == {"tone@1"}, "a's copy predates the call and may be serving"


async def test_no_engine_up_is_an_error():
    host = FakeHost()
    host.healthy.clear()
    with pytest.raises(HotLoadError, match="no engine"):
        await HotLoader(host).load_everywhere("tone@1", "/x")


async def test_unload_waits_for_the_drain_and_skips_a_version_needed_again():
    host = FakeHost()
    loader = HotLoader(host, drain_timeout_s=30)
    await loader.load_everywhere("tone@1", "/x")
    host.running["tone@1"] = 1
    unload = asyncio.create_task(loader.unload_when_drained("tone@1", lambda: False))
    await asyncio.sleep(0.2)
    assert not unload.done() and host.held["a"] == {"tone@1"}
    host.running["tone@1"] = 0
    await asyncio.wait_for(unload, 10)
    assert host.held == {"a": set(), "b": set()}
    await loader.load_everywhere("tone@1", "/x")
    await loader.unload_when_drained("tone@1", lambda: True)
    assert host.held["a"] == {"tone@1"}


async def test_the_reconciler_reloads_what_an_engine_lost():
    host = FakeHost()
    loader = HotLoader(host)
    reconciler = Reconciler(loader, lambda: {"tone@1": "/x", "tone@2": "/y"})
    await reconciler.repair()
    assert host.held == {"a": {"tone@1", "tone@2"}, "b": {"tone@1", "tone@2"}}
    host.held["b"].clear()  # engine b restarted behind the gateway's back
    await reconciler.repair()
    assert host.held["b"] == {"tone@1", "tone@2"}


async def test_a_load_during_an_unload_of_the_same_name_ends_loaded():
    """An unload under way when the same version is asked for again (a candidate released, then
    swapped in): the load waits for it, so the version is not lost right after being 'loaded'."""
    host = FakeHost()
    loader = HotLoader(host)
    await loader.load_everywhere("tone@1", "/x")
    unloading, finish = asyncio.Event(), asyncio.Event()
    plain_unload = host.unload

    async def slow_unload(engine, name):
        unloading.set()
        await finish.wait()
        await plain_unload(engine, name)

    host.unload = slow_unload
    drain = asyncio.create_task(loader.unload_when_drained("tone@1", lambda: False))
    await asyncio.wait_for(unloading.wait(), 10)
    load = asyncio.create_task(loader.load_everywhere("tone@1", "/x"))
    await asyncio.sleep(0.05)
    host.unload = plain_unload
    finish.set()
    await asyncio.wait_for(asyncio.gather(drain, load), 10)
    assert host.held == {"a": {"tone@1"}, "b": {"tone@1"}}
