"""Run a real gateway (uvicorn on a loopback port) inside the test's event loop."""

import asyncio
import socket
from contextlib import asynccontextmanager

import httpx
import uvicorn

from service.app import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def running_gateway(settings, *, wrap=None, **app_kwargs):
    """Yield the base URL of a gateway serving `create_app(settings, **app_kwargs)`; `wrap`, if
    given, takes that ASGI app and returns the one uvicorn serves (e.g. one that watches it)."""
    app = create_app(settings, **app_kwargs)
    if wrap is not None:
        app = wrap(app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port,
                                           log_level="warning", lifespan="on"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises the start-up error
            raise RuntimeError("gateway exited during start-up")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        await task


def client(base_url: str, key: str | None = None, timeout: float = 120.0) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
