"""Do completions keep their pace while a training runs? Completion throughput of a domain with
retrieval, alone and beside a running training job (goal: >= 0.7 of alone).

    .venv/bin/python -m bench.train_beside [--rounds 2] [--requests 16] [--concurrency 4] [--engine-url URL]

The gateway and a local vLLM run as in `make serve`; the training is a real `reader` job on
bench/lore.py's corpus (its trainer process niced, GRAFT_TRAINING_THREADS threads). Rounds
alternate alone / beside (ABBA) so drift on a shared machine cancels; "beside" windows start only
once the job reports training steps (example synthesis, which runs on the engine, is not counted).
Throughput is generated tokens (`ignore_eos`, fixed max_tokens) over each window's wall time.
"""

import argparse
import asyncio
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import lore_domain, one_request  # noqa: E402
from bench.lore import corpus_and_questions  # noqa: E402


async def window(http, questions: list[str], requests: int, concurrency: int, max_tokens: int) -> float:
    """Generated tokens per second over `requests` chat requests to the domain, `concurrency` at once."""
    queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(questions[i % len(questions)])
    results = []

    async def worker():
        while not queue.empty():
            question = queue.get_nowait()
            results.append(await one_request(http, {
                "model": "lore", "messages": [{"role": "user", "content": question}], "temperature": 0,
                "max_tokens": max_tokens, "ignore_eos": True}))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} requests failed: {failed[0]}")
    return sum(r.tokens for r in results) / elapsed


async def start_training(http, args) -> str:
    response = await http.post("/v1/adapters/lore-reader/trainings", json={
        "corpus": "lore", "recipe": "reader", "rank": 8, "epochs": 50, "max_examples": args.max_examples})
    if response.status_code != 202:
        raise SystemExit(response.text)
    job_id = response.json()["job_id"]
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:  # until the trainer process reports steps
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in ("failed", "cancelled", "succeeded"):
            raise SystemExit(f"training {job['status']} before the measurement: {job.get('reason')}")
        if (job.get("progress") or {}).get("step"):
            return job_id
        await asyncio.sleep(1)
    raise SystemExit("the training reported no step in 30 minutes")


async def until_ended(http, job_id: str) -> None:
    deadline = time.monotonic() + 600
    while (await http.get(f"/v1/jobs/{job_id}")).json()["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            raise SystemExit(f"training {job_id} still running 10 minutes after its cancel")
        await asyncio.sleep(0.5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-examples", type=int, default=40)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--engine-url")
    args = parser.parse_args()
    docs, questions = corpus_and_questions(args.docs)
    async with lore_domain(args.engine_url, docs, "graft-bench-beside-") as http:
        await window(http, questions, args.concurrency, args.concurrency, args.max_tokens)  # warm-up
        alone, beside = [], []
        for round_ in range(args.rounds):
            for arm in (("alone", "beside") if round_ % 2 == 0 else ("beside", "alone")):
                if arm == "alone":
                    alone.append(await window(http, questions, args.requests, args.concurrency,
                                              args.max_tokens))
                else:
                    job_id = await start_training(http, args)
                    beside.append(await window(http, questions, args.requests, args.concurrency,
                                               args.max_tokens))
                    progress = (await http.get(f"/v1/jobs/{job_id}")).json()["progress"]
                    await http.post(f"/v1/jobs/{job_id}/cancel")
                    await until_ended(http, job_id)
                    print(f"  training at step {progress.get('step')}/{progress.get('steps')}, "
                          f"{progress.get('tokens_per_s') or 0:.0f} tokens/s", flush=True)
                print(f"round {round_ + 1} {arm:<6}: {(alone if arm == 'alone' else beside)[-1]:7.1f} "
                      f"tokens/s", flush=True)
    ratio = sum(beside) / sum(alone)
    print(f"\ncompletion throughput, {args.concurrency} in flight, {args.max_tokens} tokens each "
          f"(trainer threads: GRAFT_TRAINING_THREADS, default 2)")
    print(f"{'alone':>8} {'beside':>8} {'ratio':>6}   goal")
    print(f"{sum(alone) / len(alone):8.1f} {sum(beside) / len(beside):8.1f} {ratio:6.3f}   >= 0.7 -> "
          f"{'PASS' if ratio >= 0.7 else 'FAIL'}")


if __name__ == "__main__":
    asyncio.run(main())
