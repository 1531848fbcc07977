"""Trainings handed to workers through a shared folder (training/queue.py): one claim per run among
racing workers, events followed as they are written, cancel before and during a run, a dead worker
detected by its missing heartbeat, and the real trainer run by a worker end to end."""

import asyncio
import json
import os
import sys
import threading
import time

import pytest

from training import queue

# A stand-in trainer: prints N progress events (one each `pause` s) and a done event; exits 0.
FAKE = [sys.executable, "-c", """
import json, sys, time
config = json.load(open(sys.argv[1]))
for step in range(1, config["steps"] + 1):
    print(json.dumps({"event": "progress", "step": step, "steps": config["steps"]}), flush=True)
    time.sleep(config["pause"])
print(json.dumps({"event": "done", "final_loss": 0.5, "loss_curve": [1.0, 0.5]}), flush=True)
"""]


def new_run(root, name: str, config: dict):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    queue.enqueue(run)
    return run


def test_racing_workers_claim_each_run_once(tmp_path):
    runs = [new_run(tmp_path, f"run-{i}", {}) for i in range(40)]
    claimed: list = []

    def claimer():
        while (run := queue.claim_next(tmp_path)) is not None:
            claimed.append(run)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(runs)  # every run, none twice
    assert all((r / queue.CLAIMED).exists() and not (r / queue.QUEUED).exists() for r in runs)
    assert queue.claim_next(tmp_path) is None


async def test_the_gateway_follows_the_events_a_worker_writes(tmp_path):
    run = new_run(tmp_path, "job", {"steps": 3, "pause": 0.05})
    seen: list[dict] = []
    worker = threading.Thread(target=queue.work, args=(tmp_path,),
                              kwargs={"command": FAKE, "poll_s": 0.05, "heartbeat_s": 0.1, "once": True})
    worker.start()
    code = await asyncio.wait_for(queue.follow(run, seen.append, stale_after_s=60, poll_s=0.02), 120)
    worker.join(60)
    assert code == 0
    assert [e["event"] for e in seen] == ["progress"] * 3 + ["done"]
    assert [e["step"] for e in seen[:3]] == [1, 2, 3]
    assert json.loads((run / queue.EXIT).read_text()) == {"code": 0}


async def test_cancel_withdraws_a_queued_run_and_stops_a_running_one(tmp_path):
    waiting = new_run(tmp_path, "waiting", {"steps": 1, "pause": 0})
    queue.request_cancel(waiting)
    assert queue.claim_next(tmp_path) is None  # withdrawn: no worker takes it

    running = new_run(tmp_path, "running", {"steps": 10_000, "pause": 0.05})
    seen: list[dict] = []
    worker = threading.Thread(target=queue.work, args=(tmp_path,),
                              kwargs={"command": FAKE, "poll_s": 0.05, "heartbeat_s": 0.1, "once": True})
    worker.start()
    follower = asyncio.create_task(queue.follow(running, seen.append, stale_after_s=60, poll_s=0.02))
    deadline = time.monotonic() + 120
    while not seen and time.monotonic() < deadline:  # the trainer is running once it reports
        await asyncio.sleep(0.05)
    assert seen
    queue.request_cancel(running)
    code = await asyncio.wait_for(follower, 120)
    worker.join(60)
    assert code != 0 and not any(e["event"] == "done" for e in seen)


async def test_a_claimed_run_whose_worker_died_fails_instead_of_waiting_forever(tmp_path):
    run = new_run(tmp_path, "orphan", {})
    assert queue.claim_next(tmp_path) == run  # claimed by a worker that then vanished
    old = time.time() - 300
    os.utime(run / queue.CLAIMED, (old, old))
    with pytest.raises(queue.TrainerLost, match="heartbeat"):
        await asyncio.wait_for(queue.follow(run, lambda e: None, stale_after_s=60, poll_s=0.02), 30)


async def test_a_worker_runs_the_real_trainer(tmp_path, make_config):
    root = tmp_path / "trainings"
    run = new_run(root, "real", make_config(out_dir=str(tmp_path / "adapter"), batch_size=6, epochs=2))
    seen: list[dict] = []
    worker = threading.Thread(target=queue.work, args=(root,), kwargs={"poll_s": 0.05, "once": True})
    worker.start()
    code = await asyncio.wait_for(queue.follow(run, seen.append, stale_after_s=60), 600)
    worker.join(60)
    assert code == 0, (run / "trainer.log").read_text()[-3000:]
    kinds = [e["event"] for e in seen]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
