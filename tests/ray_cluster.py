"""A local Ray cluster for the tests marked `ray`: `ray start --head --block` on free ports in a short temp
folder, as this test session's child; stopped (its process group) at the end, or when the session dies
(a killed test run leaves no cluster, and no replica's vLLM, behind). Serve's proxy listens on a
free port too (never 8000 or Ray's own defaults: other sessions on this machine may use them)."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from service.engine.supervisor import die_with_parent
from tests.harness import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclass
class RayCluster:
    address: str
    serve_port: int


@contextmanager
def ray_cluster(num_cpus: int = 2, start_timeout_s: float = 120) -> Iterator[RayCluster]:
    import ray
    from ray import serve

    # Unix socket paths under it must stay short (pytest's tmp paths are too long for them).
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={port}",
               f"--num-cpus={num_cpus}", "--disable-usage-stats", "--include-dashboard=false",
               f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               "--min-worker-port=0", "--max-worker-port=0"]  # workers on random ports
    log = open(Path(temp_dir) / "ray-start.log", "wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=functools.partial(die_with_parent, os.getpid()))
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        # Connecting before the head is up makes ray.init wait on the GCS for minutes.
        while b"Ray runtime started" not in (Path(temp_dir) / "ray-start.log").read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                tail = (Path(temp_dir) / "ray-start.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray start failed:\n{tail}")
            time.sleep(0.2)
        ray.init(address=address, namespace="graft", log_to_driver=False)
        cluster = RayCluster(address, free_port())
        serve.start(http_options={"host": "127.0.0.1", "port": cluster.serve_port})
        yield cluster
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            _stop(head)
            log.close()
            shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(head: subprocess.Popen, grace_s: float = 5) -> None:
    """SIGTERM to `ray start --block` (it stops the processes it started), then its whole process group."""
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait()
