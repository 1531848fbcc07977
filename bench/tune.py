"""Domain tuning bench on Debian's git-doc pages and the questions of bench/git_doc_questions.py.

A domain `git` over the git-doc corpus starts from the default configuration (hybrid, k=4, the
numbered-passages template, no system prompt). A tuning (POST /v1/domains/git/tunings) searches its
configuration on the tuning split of the questions (about 70 %, by a hash of each id) with a budget
of N trials; its result scores the winner and the live (base) configuration on the held-out rest.

Prints: tuning wall time, engine calls (questions asked: baseline, trials, holdout), trials and how
many the pruner stopped, the winner's diff, and tuned vs base on the holdout split (goal: tuned >=
base + 0.05).

    .venv/bin/python -m bench.tune [--engine-url URL] [--trials N] [--questions N] [--metric M] [--space JSON]
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from bench.common import DEFAULT_BASE_MODEL, engine_url, free_port, migrated_settings, serve_subprocess  # noqa: E402
from bench.eval import GIT_DOC, wait_job  # noqa: E402
from bench.git_doc_questions import PAGES, QUESTIONS  # noqa: E402

GOAL_GAIN = 0.05


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-url", help="a running vLLM (default: start one here)")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="the first N questions")
    parser.add_argument("--metric", default="answer_contains")
    parser.add_argument("--space", help="JSON choices per parameter (default: the gateway's whole space)")
    args = parser.parse_args()
    missing = [p for p in PAGES if not (GIT_DOC / p).is_file()]
    if missing:
        sys.exit(f"git-doc pages missing ({len(missing)}): apt-get install git-doc")
    with tempfile.TemporaryDirectory(prefix="graft-bench-tune-") as tmp:
        async with engine_url(args.engine_url, Path(tmp) / "engine", DEFAULT_BASE_MODEL) as engine:
            settings = migrated_settings(Path(tmp) / "gateway", DEFAULT_BASE_MODEL, engine_urls=[engine],
                                         port=free_port())
            async with serve_subprocess(settings, Path(tmp) / "gateway.log") as url, \
                    httpx.AsyncClient(base_url=url, timeout=1800) as http:
                await bench(http, args)


async def bench(http, args) -> None:
    await http.post("/v1/corpora", json={"name": "git-doc"})
    upload = await http.post("/v1/corpora/git-doc/documents", files=[
        ("files", (page, (GIT_DOC / page).read_bytes(), "text/html")) for page in PAGES])
    await wait_job(http, upload.json()["job_id"])
    items = [{"id": str(i + 1), "question": q, "answers": answers, "document_ids": pages}
             for i, (q, pages, answers) in enumerate(QUESTIONS[:args.questions])]
    await http.post("/v1/evalsets", json={"name": "git-doc-qa", "items": items})
    await http.put("/v1/domains/git", json={"corpora": ["git-doc"], "retrieval": {"k": 4, "mode": "hybrid"}})

    body = {"evalset": "git-doc-qa", "metric": args.metric, "budget": {"trials": args.trials}}
    if args.space:
        body["space"] = json.loads(args.space)
    started = time.perf_counter()
    answer = await http.post("/v1/domains/git/tunings", json=body)
    if answer.status_code != 202:
        sys.exit(f"tuning refused: {answer.text}")
    job = await wait_job(http, answer.json()["job_id"], timeout_s=4 * 3600)
    wall_s = time.perf_counter() - started
    result = job["result"]
    version = (await http.get(f"/v1/domains/git/configs/{result['config_version']}")).json()
    print(f"git-doc: {len(PAGES)} pages, {len(items)} questions: {result['tuning_items']} tuning "
          f"(+{len(result['demonstrations'])} kept as demonstrations), {result['holdout_items']} holdout")
    print(f"tuning: {result['trials']} trials ({result['pruned']} pruned), {result['engine_calls']} engine calls, "
          f"{wall_s:.0f} s wall ({wall_s / max(result['engine_calls'], 1):.2f} s per call)")
    for trial in version["trials"]:
        print(f"  trial {trial['number']:>2} {trial['state']:<8} {args.metric} {trial['score']:.3f} on "
              f"{trial['items']} items  {json.dumps(trial['params'])}")
    print(f"winner (trial {result['best_trial']}), diff vs base:")
    for field, change in version["diff"].items():
        print(f"  {field}: {json.dumps(change['current'])} -> {json.dumps(change['config'])[:200]}")
    print(f"{args.metric} on the tuning split: base {result['current_tuning_score']:.3f}, "
          f"tuned {result['tuning_score']:.3f}")
    gain = result["holdout_score"] - result["current_score"]
    print(f"{args.metric} on the holdout split: base {result['current_score']:.3f}, tuned "
          f"{result['holdout_score']:.3f}, gain {gain:+.3f} (goal >= {GOAL_GAIN}: "
          f"{'PASS' if gain >= GOAL_GAIN else 'FAIL'})")


if __name__ == "__main__":
    asyncio.run(main())
