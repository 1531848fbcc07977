"""The trainer process: `python -m training.run CONFIG_JSON_PATH`.

- stdout carries only the protocol's JSON events, one a line, each flushed (training.protocol);
  the process points its own file descriptor 1 at stderr first, so library prints and warnings
  cannot corrupt the stream.
- Lowers its priority (os.nice(10)) and bounds its threads to the config's `threads`
  (OMP/MKL/OpenBLAS variables set before torch is imported, torch.set_num_threads), with
  OMP_WAIT_POLICY=PASSIVE unless the environment sets it.
- Exit codes: 0 after "done"; 1 after "error" (bad config or examples, or any failure); 143
  after "cancelled" on SIGTERM or SIGINT.
- Cancellation is prompt: training runs in a worker thread and the main thread handles the
  signal while the worker is inside a torch op; the process exits at once with nothing written
  to out_dir (its temporary folder is removed). If the signal lands after the adapter was
  renamed into out_dir, the run finishes normally ("done", exit 0). A checkpoint already written
  stays, so the same config with "resume": true continues from it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import traceback

from training.protocol import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_OK,
    Cancelled,
    ConfigError,
    ExamplesError,
    TrainConfig,
    event_line,
)

NICE = 10


class Emitter:
    """Writes events to the protocol's file descriptor, one line per write, from any thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()

    def emit(self, event: dict, timeout: float = -1) -> None:
        data = (event_line(event) + "\n").encode()
        locked = self.lock.acquire(timeout=timeout)
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        finally:
            if locked:
                self.lock.release()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    emitter = Emitter(os.dup(1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    if len(args) != 1:
        emitter.emit({"event": "error", "message": "usage: python -m training.run CONFIG_JSON_PATH"})
        return EXIT_ERROR
    try:
        cfg = TrainConfig.from_file(args[0])
    except ConfigError as exc:
        emitter.emit({"event": "error", "message": str(exc)})
        return EXIT_ERROR

    try:
        os.nice(NICE)
    except OSError as exc:
        print(f"training: cannot lower priority: {exc}", file=sys.stderr)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cfg.threads)
    # OpenMP threads that wait passively: a niced trainer whose 2 threads spin at each barrier
    # while the other cores' owners preempt one of them ran 10x slower (see training.device).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from training.trainer import CommitGate, temp_dir_for, train

    gate = CommitGate()
    stopping = threading.Event()

    def on_signal(signum, frame):
        stopping.set()
        if gate.cancel():
            emitter.emit({"event": "cancelled"}, timeout=5)
            shutil.rmtree(temp_dir_for(cfg.out_dir), ignore_errors=True)
            os._exit(EXIT_CANCELLED)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    outcome: dict = {}

    def work():
        try:
            train(cfg, emitter.emit, should_stop=stopping.is_set, gate=gate)
            outcome["rc"] = EXIT_OK
        except Cancelled:
            outcome["rc"] = EXIT_CANCELLED
        except (ConfigError, ExamplesError) as exc:
            outcome["error"] = str(exc)
        except BaseException as exc:  # noqa: BLE001 - reported as the error event
            traceback.print_exc(file=sys.stderr)
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=work, name="training")
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    if "error" in outcome:
        emitter.emit({"event": "error", "message": outcome["error"]})
        return EXIT_ERROR
    if outcome.get("rc") == EXIT_CANCELLED:
        emitter.emit({"event": "cancelled"})
        return EXIT_CANCELLED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
