"""Keep every engine's loaded adapters equal to what the domains need.

`prepare` runs when an engine comes (back) up, before it takes traffic; `run` repairs drift
periodically by comparing each engine's /v1/models with the needed set.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters_store.hotload import HotLoader

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, loader: HotLoader, needed: Callable[[], dict[str, str]], base_model: str,
                 interval_s: float = 15.0):
        self.loader = loader
        self.needed = needed  # adapter name → folder
        self.base_model = base_model
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def prepare(self, engine) -> None:
        engine.loaded_adapters = await self._engine_adapters(engine)
        for name, path in self.needed().items():
            await self.loader.ensure_loaded(engine, name, path)
        log.info("engine %s holds %d adapter(s)", engine.url, len(engine.loaded_adapters))

    async def repair(self) -> None:
        for engine in self.loader.pool.engines:
            if engine.ready:
                with contextlib.suppress(Exception):
                    await self.prepare(engine)

    async def _engine_adapters(self, engine) -> set[str]:
        return {name for name in await engine.client.model_names() if name != self.base_model}

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="adapter-reconciler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.repair()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
