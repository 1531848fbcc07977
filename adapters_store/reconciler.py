"""Keep every engine's adapters equal to what must be loaded: what the domains route to and the
versions kept loaded for runs in progress (the gateway passes `SwapService.needed_adapters`).

`prepare` runs when an engine comes (back) up, before it takes traffic; `repair` runs
periodically and reloads what an engine lost, reading each engine's own list of models.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable

from adapters_store.hotload import HotLoader

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, loader: HotLoader, needed: Callable[[], dict[str, str]], interval_s: float = 15.0):
        self.loader = loader
        self.needed = needed  # adapter name → folder
        self.interval_s = interval_s
        self._task: asyncio.Task | None = None

    async def prepare(self, engine: str) -> None:
        held = await self.loader.host.refresh(engine)
        for name, path in self.needed().items():
            await self.loader.ensure_loaded(engine, name, path)
        log.info("engine %s holds %d adapter(s)", engine, len(held | set(self.needed())))

    async def repair(self) -> None:
        for engine in self.loader.host.ready_engines():
            try:
                await self.prepare(engine)
            except Exception as exc:  # the next round tries again
                log.warning("reconciling engine %s failed: %s", engine, exc)

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
