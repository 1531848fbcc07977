"""`graft serve` start-up failures are one clear line and a non-zero exit, never a hang.
(A real serve stopped by Ctrl-C, SIGTERM or SIGKILL: test_lifecycle.py.)"""

import os
import socket
import subprocess
import sys

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
    # The exit is noticed as such ("vLLM exited"), not waited out: the start-up timeout (generous, for
    # a loaded machine) would say "not healthy after 600s" instead.
    result = _graft(["serve"], dict(env, GRAFT_BASE_MODEL=str(broken), GRAFT_ENGINE_START_TIMEOUT_S="600"),
                    timeout=700)
    assert "vLLM exited" in _one_error_line(result)
