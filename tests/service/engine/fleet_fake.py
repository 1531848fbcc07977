"""The fake engine (tests/fake_engine.py) as a fleet replica's engine: `deploy(..., starter=start_fake_engine)`.
`POST /fake/exit` through the fleet makes the replica that gets it see its engine gone, as when vLLM dies."""

from aiohttp import web

from tests.fake_engine import FakeEngine, serving_handler


class FakeReplicaEngine:
    def __init__(self):
        self.engine = FakeEngine()
        self._serving = serving_handler(self._respond)
        self.url = ""
        self.exited = False

    @property
    def running(self) -> bool:
        return not self.exited

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/fake/exit":
            self.exited = True
            return web.json_response({"exited": True})
        return await self.engine._respond(request)

    async def stop(self) -> None:
        await self._serving.__aexit__(None, None, None)


async def start_fake_engine() -> FakeReplicaEngine:
    replica_engine = FakeReplicaEngine()
    replica_engine.url = await replica_engine._serving.__aenter__()
    return replica_engine
