"""A real `graft serve` with its local vLLM child, run as an operator runs it: Ctrl-C, SIGTERM and
SIGKILL of the gateway's process each leave no engine process behind; and an engine started with
GRAFT_LORA_TARGET_MODULES serves adapters on those layers and no others.

Each test waits for states (ready, gone) with generous bounds; none is timed. Whatever happens, a
test leaves no process of its own running (the machine is shared with the rest of the suite)."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from migrations.runner import upgrade
from tests.adapters_store.lora_factory import make_lora
from tests.harness import free_port
from tests.service.test_adapters_engine import adapter_files

pytestmark = pytest.mark.engine
BASE = "SmolLM2-135M-Instruct"
PROMPT = {"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0}


def engine_group(port: str) -> int | None:
    """The process group of the vLLM server on `port` (the supervisor makes it a group leader)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "vllm.entrypoints" in line and f"--port {port}" in line:
            return int(line.split()[0])
    return None


def group_members(pgid: int) -> list[str]:
    """Live processes of group `pgid`. A zombie is dead and holds nothing; once its parent, the
    vLLM server, is gone it waits for init to reap it, which graft cannot hurry."""
    out = subprocess.run(["ps", "-ww", "-eo", "pgid,pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:]
            if int(line.split()[0]) == pgid and not line.split()[2].startswith("Z")]


async def until(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


class Serve:
    """`graft serve` in a session of its own, its output in a file (a pipe nobody reads fills up)."""

    def __init__(self, env: dict, log: Path):
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['GRAFT_PORT']}"
        self.engine_url = f"http://127.0.0.1:{env['GRAFT_ENGINE_PORT']}"
        with log.open("wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.engine_pgid: int | None = None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    async def engine_started(self) -> int:
        """Wait until the vLLM server and its engine core both run; the engine's process group."""
        def started() -> bool:
            assert self.process.poll() is None, f"graft serve exited:\n{self.tail()}"
            self.engine_pgid = engine_group(self.env["GRAFT_ENGINE_PORT"])
            return self.engine_pgid is not None and len(group_members(self.engine_pgid)) >= 2
        await until(started, "vLLM and its engine core to start")
        return self.engine_pgid

    async def ready(self) -> int:
        await self.engine_started()
        async with httpx.AsyncClient(timeout=10) as http:
            async def probe() -> bool:
                try:
                    return (await http.get(f"{self.url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False
            deadline = time.monotonic() + 600
            while not await probe():
                assert self.process.poll() is None, f"graft serve exited:\n{self.tail()}"
                assert time.monotonic() < deadline, f"graft serve was not ready:\n{self.tail()}"
                await asyncio.sleep(1)
        return self.engine_pgid

    async def engine_gone(self) -> None:
        """Every process of the engine's group ends (SIGKILLed members may take a moment)."""
        await until(lambda: not group_members(self.engine_pgid), f"the engine's processes to end:\n"
                    f"{group_members(self.engine_pgid)}", timeout=120)

    async def exited(self) -> int:
        await until(lambda: self.process.poll() is not None, "graft serve to exit", timeout=180)
        return self.process.returncode

    def kill_all(self) -> None:
        for pgid in (self.process.pid, self.engine_pgid):
            if pgid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


@pytest.fixture
def serve(tmp_path, base_model_dir):
    """Start `graft serve` (with extra environment variables) in a fresh data dir; kills what is left."""
    started: list[Serve] = []

    def start(**extra_env) -> Serve:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        upgrade(f"sqlite:///{(data / 'graft.db').resolve()}")
        env = dict(os.environ, GRAFT_DATA_DIR=str(data), GRAFT_BASE_MODEL=str(base_model_dir),
                   GRAFT_PORT=str(free_port()), GRAFT_ENGINE_PORT=str(free_port()), HF_HUB_OFFLINE="1",
                   **extra_env)
        env.pop("GRAFT_ENGINE_URLS", None)
        started.append(Serve(env, tmp_path / f"serve-{len(started)}.log"))
        return started[-1]

    yield start
    for process in started:
        process.kill_all()


async def test_ctrl_c_stops_the_gateway_and_its_engine(serve):
    server = serve()
    await server.ready()
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        answer = await http.post("/v1/chat/completions", json={
            "model": BASE, "temperature": 0, "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    server.process.send_signal(signal.SIGINT)
    assert await server.exited() in (0, 130), server.tail()
    await server.engine_gone()


async def completion_text(url: str, model: str) -> str:
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.post(f"{url}/v1/completions", json={"model": model, **PROMPT})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


async def load_on_engine(url: str, name: str, path: Path) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        response = await http.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
    assert response.status_code == 200, response.text


async def unload_from_engine(url: str, name: str) -> None:
    async with httpx.AsyncClient(timeout=300) as http:
        await http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name})


async def test_lora_target_modules_narrow_the_engine_and_sigterm_stops_it(serve, good_lora, base_model_dir,
                                                                         tmp_path, local_engine):
    """One engine start for two claims. GRAFT_LORA_TARGET_MODULES=q_proj,v_proj: an adapter on those
    layers is served and changes the answer; one on other layers is refused at upload, and the engine
    itself ignores those layers (loaded behind the gateway's back, it answers as the base model does,
    while the session's engine, which wraps every layer, answers differently with it). Then SIGTERM
    to the gateway's process alone stops the gateway and its whole engine."""
    # Untrained, random LoRAs (init_lora_weights=False): any layer they reach changes the answer.
    mlp_only = make_lora(base_model_dir, tmp_path / "mlp-only", target_modules=("gate_proj", "up_proj", "down_proj"))
    server = serve(GRAFT_LORA_TARGET_MODULES="q_proj,v_proj")
    await server.ready()
    args = next(line for line in group_members(server.engine_pgid) if "vllm.entrypoints" in line)
    assert "--lora-target-modules q_proj v_proj" in args, args

    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        uploaded = await http.post("/v1/adapters/narrow/versions", files=adapter_files(good_lora))
        assert uploaded.status_code == 201, uploaded.text
        bound = await http.put("/v1/domains/narrow", json={"adapter": {"name": "narrow", "version": 1}})
        assert bound.status_code == 201, bound.text
        narrow = await http.post("/v1/completions", json={"model": "narrow", **PROMPT})
        assert narrow.status_code == 200 and narrow.json()["adapter"] == "narrow@1", narrow.text

        refused = await http.post("/v1/adapters/wide/versions", files=adapter_files(mlp_only))
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "module_not_served", refused.text
        assert "gate_proj" in refused.json()["error"]["message"]
        assert (await http.get("/v1/adapters/wide/versions")).status_code == 404

    # The same prompt straight to the engine: the gateway's q_proj/v_proj adapter changes the answer ...
    base_text = await completion_text(server.engine_url, BASE)
    assert await completion_text(server.engine_url, "narrow@1") != base_text
    # ... an adapter on the MLP layers alone does not: the engine does not wrap them.
    await load_on_engine(server.engine_url, "mlp-only", mlp_only)
    assert await completion_text(server.engine_url, "mlp-only") == base_text
    # Control: on an engine that wraps every layer, the same adapter does change the answer.
    await load_on_engine(local_engine.url, "mlp-only-control", mlp_only)
    try:
        assert await completion_text(local_engine.url, "mlp-only-control") != await completion_text(
            local_engine.url, BASE)
    finally:
        await unload_from_engine(local_engine.url, "mlp-only-control")

    server.process.send_signal(signal.SIGTERM)
    assert await server.exited() == 0, server.tail()
    await server.engine_gone()


async def test_sigkill_of_the_gateway_takes_its_engine_too(serve):
    """SIGKILL to the gateway's process alone (no handler runs): its engine, a process group of its
    own, still goes away (the kernel tells it its parent died)."""
    server = serve()
    await server.ready()
    server.process.send_signal(signal.SIGKILL)
    assert await server.exited() == -signal.SIGKILL
    await server.engine_gone()
