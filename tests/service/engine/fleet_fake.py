"""The fake engine (tests/fake_engine.py) as a fleet replica's engine: `deploy(..., starter=start_fake_engine)`."""

from tests.fake_engine import FakeEngine


class FakeReplicaEngine:
    def __init__(self):
        self.engine = FakeEngine()
        self._serving = self.engine.serving()
        self.url = ""
        self.stopped = False

    @property
    def running(self) -> bool:
        return not self.stopped

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self._serving.__aexit__(None, None, None)


async def start_fake_engine() -> FakeReplicaEngine:
    replica_engine = FakeReplicaEngine()
    replica_engine.url = await replica_engine._serving.__aenter__()
    return replica_engine
