"""Load and unload adapter versions on engines, under immutable names `adapter@version`.

The engines are reached only through `AdapterHost`, a protocol this package owns and the
gateway's engine pool implements: the pool alone changes what an engine holds, this module
decides what to load where and when. A second kind of engine (another OpenAI-compatible
server, a fake in unit tests) is one class behind the protocol.
"""

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)


class HotLoadError(Exception):
    pass


@runtime_checkable
class AdapterHost(Protocol):
    """The engines adapters live on. Engines are named by an id (their URL)."""

    def healthy_engines(self) -> list[str]: ...

    def ready_engines(self) -> list[str]:
        """Healthy engines that take traffic (their adapters are back after a restart)."""
        ...

    def holds(self, engine: str, name: str) -> bool: ...

    async def load(self, engine: str, name: str, path: str) -> None:
        """Load the adapter folder `path` under `name` and record that the engine holds it."""
        ...

    async def unload(self, engine: str, name: str) -> None:
        """Unload `name` and record that the engine no longer holds it (even if the call fails)."""
        ...

    async def warm_up(self, engine: str, name: str) -> None:
        """One tiny request through the adapter, so the first real request pays no load cost."""
        ...

    async def refresh(self, engine: str) -> set[str]:
        """Ask the engine itself which adapters it holds, and take that as the record."""
        ...

    def in_flight(self, name: str) -> int:
        """Requests routed to the engine model `name` and not finished: being planned, or running on
        any engine."""
        ...


class HotLoader:
    def __init__(self, host: AdapterHost, drain_timeout_s: float = 60.0):
        self.host = host
        self.drain_timeout_s = drain_timeout_s
        # One residency change of a name at a time: a load waits for an unload of the same name
        # that is under way, instead of finding it still held and then losing it.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def ensure_loaded(self, engine: str, name: str, path: str) -> bool:
        """Load and warm up `name` on `engine` unless it holds it already; True when loaded now."""
        if self.host.holds(engine, name):
            return False
        await self.host.load(engine, name, path)
        await self.host.warm_up(engine, name)
        return True

    async def load_everywhere(self, name: str, path: str) -> None:
        """Load on every healthy engine, or on none: a failure unloads what this call loaded."""
        engines = self.host.healthy_engines()
        if not engines:
            raise HotLoadError("no engine is up to load the adapter on; retry when one is ready")
        async with self._locks[name]:
            loaded_here = []
            try:
                for engine in engines:
                    if await self.ensure_loaded(engine, name, path):
                        loaded_here.append(engine)
            except Exception as exc:
                for engine in loaded_here:
                    await self._unload(engine, name)
                raise HotLoadError(f"loading {name} failed: {getattr(exc, 'message', exc)}") from exc

    async def unload_when_drained(self, name: str, still_needed: Callable[[], bool]) -> None:
        """Wait until no request runs on `name`, then unload it unless something uses it again."""
        deadline = time.monotonic() + self.drain_timeout_s
        while self.host.in_flight(name) > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        async with self._locks[name]:
            if still_needed():
                return
            for engine in self.host.healthy_engines():
                if self.host.holds(engine, name):
                    await self._unload(engine, name)

    async def _unload(self, engine: str, name: str) -> None:
        try:
            await self.host.unload(engine, name)
        except Exception as exc:  # the engine may be down; the reconciler repairs drift
            log.warning("unloading %s from %s failed: %s", name, engine, exc)
