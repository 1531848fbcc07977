"""Trainings handed to trainer workers through a shared folder: the gateway with GRAFT_TRAINER=queue
writes a run and waits; `graft trainer` (compose's `trainer` service, on a GPU) runs it.

A run is a folder (DATA/trainings/<job id>/) holding the trainer's config.json and, over its life:

    queued        the gateway's request (written last, atomically); a worker claims the run by
                  renaming it to `claimed`: of several workers, one rename wins
    claimed       touched by the worker every HEARTBEAT_S while the trainer runs
    events.jsonl  the trainer's stdout: training.protocol events, one a line
    exit.json     {"code": n}, written atomically by the worker once the trainer has exited
    cancel        written by the gateway: the worker stops the trainer (SIGTERM, as local runs)

Only files and renames, so any number of workers and gateways that mount the same volume at the
same path (the config holds absolute paths) agree without a broker. A worker that dies leaves a
`claimed` no one touches: the gateway fails the run after `stale_after_s` instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from training.durable import write_bytes_durably

log = logging.getLogger(__name__)

QUEUED, CLAIMED, EVENTS, EXIT, CANCEL = "queued", "claimed", "events.jsonl", "exit.json", "cancel"
HEARTBEAT_S = 5.0
TRAINER = [sys.executable, "-m", "training.run"]  # + the config's path


class TrainerLost(RuntimeError):
    """The worker that claimed a run stopped touching it: it died or lost the volume."""


# --- the gateway's side -------------------------------------------------------------------------

def enqueue(run: Path) -> None:
    """Offer the run (its config.json already written) to the workers."""
    write_bytes_durably(run / QUEUED, json.dumps({"at": time.time()}).encode())


def request_cancel(run: Path) -> None:
    """Stop the run: a worker running it stops its trainer; one not yet claimed is withdrawn."""
    write_bytes_durably(run / CANCEL, b"")
    with contextlib.suppress(FileNotFoundError):
        (run / QUEUED).unlink()


async def follow(run: Path, on_event: Callable[[dict], None], *, stale_after_s: float,
                 poll_s: float = 0.5) -> int:
    """Pass each event the trainer writes to `on_event` as it comes; return the trainer's exit code.
    Waits as long as the run is queued (no worker yet); raises TrainerLost when a claimed run's
    heartbeat is older than `stale_after_s`."""
    offset, partial = 0, b""
    while True:
        finished = (run / EXIT).is_file()  # read before the events: none can follow the exit file
        with contextlib.suppress(FileNotFoundError):
            with open(run / EVENTS, "rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for line in lines:
                if line.strip():
                    on_event(parse_event(line))
        if finished:
            return int(json.loads((run / EXIT).read_text())["code"])
        with contextlib.suppress(FileNotFoundError):
            age = time.time() - (run / CLAIMED).stat().st_mtime
            if age > stale_after_s:
                raise TrainerLost(f"the trainer worker stopped answering ({age:.0f} s without a heartbeat)")
        await asyncio.sleep(poll_s)


def parse_event(line: bytes) -> dict:
    """One line of the trainer's events; {} for anything else."""
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


# --- the worker's side --------------------------------------------------------------------------

def claim_next(root: Path) -> Path | None:
    """The oldest queued run, claimed for this worker; None when there is none."""
    queued = []
    for marker in root.glob(f"*/{QUEUED}"):
        with contextlib.suppress(FileNotFoundError):
            queued.append((marker.stat().st_mtime, marker.parent))
    for _, run in sorted(queued):
        try:
            os.rename(run / QUEUED, run / CLAIMED)  # one worker's rename wins; the others' fail
        except FileNotFoundError:
            continue
        return run
    return None


def run_claimed(run: Path, *, command: list[str] = TRAINER, heartbeat_s: float = HEARTBEAT_S,
                stop: threading.Event | None = None) -> int:
    """Run the trainer on a claimed run, its stdout into events.jsonl; stop it (SIGTERM) on a cancel
    request or when `stop` is set; write exit.json. Returns the trainer's exit code."""
    with open(run / EVENTS, "ab") as events, open(run / "trainer.log", "ab") as stderr:
        process = subprocess.Popen([*command, str(run / "config.json")], stdout=events, stderr=stderr,
                                   stdin=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        stopping = False
        while True:
            try:
                code = process.wait(timeout=heartbeat_s)
                break
            except subprocess.TimeoutExpired:
                pass
            os.utime(run / CLAIMED)
            if not stopping and ((run / CANCEL).exists() or (stop is not None and stop.is_set())):
                process.send_signal(signal.SIGTERM)
                stopping = True
    write_bytes_durably(run / EXIT, json.dumps({"code": code}).encode())
    return code


def work(root: Path, *, command: list[str] = TRAINER, poll_s: float = 2.0, heartbeat_s: float = HEARTBEAT_S,
         stop: threading.Event | None = None, once: bool = False) -> None:
    """Claim and run queued trainings one at a time until `stop` is set (or, with `once`, after one)."""
    stop = stop or threading.Event()
    root.mkdir(parents=True, exist_ok=True)
    while not stop.is_set():
        run = claim_next(root)
        if run is None:
            stop.wait(poll_s)
            continue
        log.info("training %s: started", run.name)
        code = run_claimed(run, command=command, heartbeat_s=heartbeat_s, stop=stop)
        log.info("training %s: the trainer exited with code %s", run.name, code)
        if once:
            return
