"""Run a real gateway (uvicorn on a loopback port) inside the test's event loop."""

import asyncio
import random
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768-60999 here). A port from that range
    (what binding port 0 gives) can be taken as the source port of any outgoing connection in the
    seconds before a `graft serve` subprocess binds it; one below it is only ever bound on purpose."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = random.randint(min(20000, low // 2), low - 1)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


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


async def until(condition, what: str, timeout: float = 120) -> None:
    """Wait for a state, with a generous bound; `condition` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
