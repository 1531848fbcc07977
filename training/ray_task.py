"""Trainings as Ray tasks (GRAFT_TRAINER=ray): the trainer runs where the Ray cluster has the resources
the training asks for (CPUs, a GPU), with nothing shared but Ray itself.

The gateway's side (`train`) sends the run's config and examples with the task, relays the trainer's
events (training.protocol, one a line of its stdout) to `on_event` through a Ray queue actor while
it runs, and writes the adapter files the task returns into the run's folder, as a local run leaves
them. A cancelled job cancels the task, which stops its trainer (SIGTERM, as local runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import ray
from ray.util.queue import Queue

from training.protocol import TRAINER, parse_event

POLL_S = 0.5


@ray.remote(max_retries=0)
def _run(config: dict, examples: bytes, events: Queue) -> dict:
    """On a Ray worker: the trainer on a folder of its own; returns its exit code and adapter files."""
    work = Path(tempfile.mkdtemp(prefix="graft-training-"))
    try:
        (work / "examples.jsonl").write_bytes(examples)
        config = {**config, "examples": str(work / "examples.jsonl"), "out_dir": str(work / "adapter")}
        (work / "config.json").write_text(json.dumps(config))
        with open(work / "trainer.log", "ab") as stderr:
            process = subprocess.Popen([*TRAINER, str(work / "config.json")], stdout=subprocess.PIPE, stderr=stderr,
                                       stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            try:
                for line in process.stdout:
                    events.put(parse_event(line))
                code = process.wait()
            finally:  # also when the task is cancelled (Ray raises KeyboardInterrupt in it)
                _stop(process)
        out = work / "adapter"
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()} \
            if code == 0 and out.is_dir() else {}
        return {"code": code, "files": files}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stop(process: subprocess.Popen, grace_s: float = 30) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _drain(events: Queue) -> list[dict]:
    size = events.qsize()
    return events.get_nowait_batch(size) if size else []


async def train(folder: Path, on_event: Callable[[dict], None], *, address: str, num_cpus: float,
                num_gpus: float) -> int:
    """Run the training prepared in `folder` (config.json, examples.jsonl) as a Ray task; its exit code."""
    if not ray.is_initialized():
        await asyncio.to_thread(ray.init, address=address, namespace="graft", log_to_driver=False)
    config = json.loads((folder / "config.json").read_text())
    events = Queue(actor_options={"num_cpus": 0})
    task = _run.options(num_cpus=num_cpus, num_gpus=num_gpus).remote(
        config, (folder / "examples.jsonl").read_bytes(), events)
    result = asyncio.wrap_future(task.future())
    try:
        while not result.done():
            await asyncio.wait([result], timeout=POLL_S)
            for event in await asyncio.to_thread(_drain, events):
                on_event(event)
        for event in await asyncio.to_thread(_drain, events):
            on_event(event)
        try:
            answer = result.result()
        except Exception as exc:  # the task failed or its worker died: the job's reason says so
            raise RuntimeError(f"the Ray training task failed: {exc}") from exc
    except asyncio.CancelledError:
        ray.cancel(task)
        raise
    finally:
        with contextlib.suppress(Exception):
            ray.kill(events.actor)
    for name, content in answer["files"].items():
        target = folder / "adapter" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return answer["code"]
