"""Run one local vLLM OpenAI server as a child process: start, wait healthy, restart, stop.

The child gets its own process group (so stopping it also stops vLLM's engine-core workers)
and PR_SET_PDEATHSIG (so it dies with the gateway even when the gateway is SIGKILLed).
"""

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
import time

from service.engine.client import EngineClient
from service.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class EngineStartError(Exception):
    """One-line reason in the message; the engine log's last lines in `log_tail`."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


def die_with_parent(parent_pid: int) -> None:
    """A `preexec_fn`: the child gets SIGTERM when its parent dies, even by SIGKILL (vLLM then stops its
    engine core, which would otherwise outlive it)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class LocalEngine:
    def __init__(self, settings: Settings, python: str = sys.executable, env: dict[str, str] | None = None):
        self.settings = settings
        self.python = python
        self.extra_env = env or {}  # on top of this process's environment and the defaults below
        self.host = "127.0.0.1"
        self.port = settings.engine_port
        self.log_path = settings.logs_dir / "engine.log"
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._watcher: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def command(self) -> list[str]:
        s = self.settings
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", s.resolved_base_model,
            "--served-model-name", s.base_model_name,
            "--host", self.host, "--port", str(self.port),
            "--dtype", s.engine_dtype,
            "--max-model-len", str(s.max_model_len),
            "--enable-lora", "--max-lora-rank", str(s.max_lora_rank), "--max-loras", str(s.max_loras),
            "--disable-uvicorn-access-log",
            *(["--lora-target-modules", *s.lora_target_modules] if s.lora_target_modules else []),
            *s.engine_extra_args,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
            VLLM_CPU_KVCACHE_SPACE=str(self.settings.engine_kv_cache_gib),
            HF_HUB_OFFLINE="1",
            VLLM_NO_USAGE_STATS="1",
            VLLM_DO_NOT_TRACK="1",
        )
        env.update(self.extra_env)
        return env

    async def start(self) -> None:
        """Spawn the server and wait until /health answers; raise EngineStartError if it can't."""
        if not port_is_free(self.host, self.port):
            raise EngineStartError(
                f"engine port {self.port} is already in use (set GRAFT_ENGINE_PORT to a free port)"
            )
        await self._spawn()
        await self._wait_healthy()

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        finally:
            log_file.close()
        log.info("started vLLM (pid %s), log: %s", self.process.pid, self.log_path)

    async def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.settings.engine_start_timeout_s
        probe = EngineClient(self.url)
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.returncode is not None:
                    code = None if self.process is None else self.process.returncode
                    raise EngineStartError(
                        f"vLLM exited with code {code} during start-up (log: {self.log_path})",
                        self.log_tail(),
                    )
                if await probe.health(attempts=1):
                    return
                await asyncio.sleep(1.0)
        finally:
            await probe.aclose()
        await self._terminate()
        raise EngineStartError(
            f"vLLM was not healthy after {self.settings.engine_start_timeout_s:.0f}s "
            f"(log: {self.log_path})",
            self.log_tail(),
        )

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def watch(self) -> None:
        """Restart the server whenever it dies, until stop() is called."""
        if self._watcher is not None and not self._watcher.done():
            return
        self._watcher = asyncio.create_task(self._watch_loop(), name="engine-supervisor")

    async def _watch_loop(self) -> None:
        backoff = 1.0
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            log.error("vLLM exited with code %s; restarting in %.0fs", code, backoff)
            await asyncio.sleep(backoff)
            try:
                self.restarts += 1
                await self._kill_group()  # leftover engine-core workers
                await self.start()
                backoff = 1.0
            except EngineStartError as exc:
                log.error("vLLM restart failed: %s", exc)
                backoff = min(backoff * 2, 60.0)

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._terminate()

    async def _terminate(self, grace_s: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except asyncio.TimeoutError:
                log.warning("vLLM did not stop in %.0fs; killing it", grace_s)
        await self._kill_group()

    async def _kill_group(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self.process is not None and self.process.returncode is None:
            await self.process.wait()

    def _signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)
