"""`graft serve` start-up failures are one clear line and a non-zero exit, never a hang;
a real serve answers and leaves no vLLM process behind after Ctrl-C."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.harness import free_port


def _graft(args, env, timeout=180, **kwargs):
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


@pytest.fixture
def env(tmp_path, base_model_dir):
    env = dict(os.environ, GRAFT_DATA_DIR=str(tmp_path / "data"), GRAFT_BASE_MODEL=str(base_model_dir),
               GRAFT_PORT=str(free_port()), GRAFT_ENGINE_PORT=str(free_port()), HF_HUB_OFFLINE="1")
    assert _graft(["db", "upgrade"], env).returncode == 0
    return env


def _one_error_line(result) -> str:
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("graft: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_broken_base_model_path(env, tmp_path):
    result = _graft(["serve"], dict(env, GRAFT_BASE_MODEL=str(tmp_path / "nope")))
    assert "no config.json" in _one_error_line(result)


def test_port_in_use(env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", int(env["GRAFT_PORT"])))
        sock.listen()
        result = _graft(["serve"], env)
    assert "already in use" in _one_error_line(result)


def test_unmigrated_database(env, tmp_path):
    result = _graft(["serve"], dict(env, GRAFT_DATA_DIR=str(tmp_path / "fresh")))
    assert "graft db upgrade" in _one_error_line(result)


def test_public_bind_without_keys_is_refused(env):
    result = _graft(["serve", "--host", "0.0.0.0"], env)
    assert "only binds loopback" in _one_error_line(result)


@pytest.mark.engine
def test_engine_that_fails_to_start(env, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "architectures": ["NoSuchArch"]}')
    started = time.monotonic()
    result = _graft(["serve"], dict(env, GRAFT_BASE_MODEL=str(broken), GRAFT_ENGINE_START_TIMEOUT_S="240"),
                    timeout=300)
    assert "vLLM exited" in _one_error_line(result)
    assert time.monotonic() - started < 280


def _engine_group(port: str) -> int | None:
    """The process group of the vLLM server on `port` (the supervisor makes it a group leader)."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "vllm.entrypoints" in line and f"--port {port}" in line:
            return int(line.split()[0])
    return None


def _group_members(pgid: int) -> list[str]:
    """Live processes of group `pgid`. A zombie is dead and holds nothing; once its parent, the
    vLLM server, is gone it waits for init to reap it, which graft cannot hurry."""
    out = subprocess.run(["ps", "-ww", "-eo", "pgid,pid,stat,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()[1:]
            if int(line.split()[0]) == pgid and not line.split()[2].startswith("Z")]


@pytest.mark.engine
def test_serve_answers_and_ctrl_c_leaves_no_engine(env):
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{env['GRAFT_PORT']}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "SmolLM2-135M-Instruct", "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        group = _engine_group(env["GRAFT_ENGINE_PORT"])
        assert group is not None and len(_group_members(group)) >= 2  # server + engine core
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    assert process.returncode in (0, 130)
    deadline = time.monotonic() + 10  # SIGKILLed members may take a moment to finish exiting
    while _group_members(group) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _group_members(group) == []
