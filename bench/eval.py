"""Evaluation bench on Debian's git-doc pages and the questions of bench/git_doc_questions.py.

  A. retrieval: hit@5 and MRR@5 per mode (dense, bm25, hybrid), without and with contextual chunk
     headers (the same corpus rebuilt with them: POST /v1/corpora/{c}/rebuild);
  B. answers: answer_contains / answer_f1 / exact_match of the domain with retrieval vs closed book
     (POST /v1/evals);
  C. evaluation throughput: questions/s of a graft evaluation vs the same prompts sent straight to
     vLLM at the same concurrency (goal: ratio >= 0.9).

    .venv/bin/python -m bench.eval [--engine-url URL] [--questions N] [--skip-answers]
                                   [--skip-throughput] [--dump-items PATH]

`--dump-items` writes B's per-item results (each run's raw outputs and scores) as JSON, so the
same outputs can be scored again by other metric code.

Retrieval figures come from the search API scored by evaluation.metrics (the code an evaluation
run uses); B and C go through real evaluation runs on a real vLLM (started here unless given).
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
os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")  # the engine started here: /reset_prefix_cache

import httpx  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from bench.common import DEFAULT_BASE_MODEL, engine_url, free_port, migrated_settings, serve_subprocess  # noqa: E402
from bench.common import wait_job as bench_wait_job  # noqa: E402
from bench.git_doc_questions import PAGES, QUESTIONS  # noqa: E402
from evaluation.metrics import hit_at_k, mrr_at_k  # noqa: E402
from service.rag.prompt import Passage, PromptBuilder  # noqa: E402

GIT_DOC = Path("/usr/share/doc/git-doc")
K = 5
MODES = ("dense", "bm25", "hybrid")
GOAL_HYBRID_HIT = 0.92
GOAL_THROUGHPUT = 0.9


async def wait_job(http, job_id: str, timeout_s: float = 1800) -> dict:
    job = await bench_wait_job(http, job_id, timeout_s)
    if job["status"] != "succeeded":
        sys.exit(f"job {job_id} {job['status']}: {job.get('reason')} {job.get('errors')}")
    return job


async def retrieval_table(http, corpus: str, questions) -> dict[str, tuple[float, float]]:
    scores = {}
    for mode in MODES:
        hits, mrrs = [], []
        for question, pages, _ in questions:
            found = (await http.post(f"/v1/corpora/{corpus}/search",
                                     json={"query": question, "k": K, "mode": mode})).json()["hits"]
            retrieved = [h["document_id"] for h in found]
            hits.append(hit_at_k(retrieved, pages, K))
            mrrs.append(mrr_at_k(retrieved, pages, K))
        scores[mode] = (sum(hits) / len(hits), sum(mrrs) / len(mrrs))
    return scores


async def run_eval(http, **body) -> dict:
    started = (await http.post("/v1/evals", json=body)).json()
    job = await wait_job(http, started["job_id"])
    return (await http.get(f"/v1/evals/{job['result']['eval_id']}")).json()


async def reset_prefix_cache(direct: httpx.AsyncClient) -> None:
    try:
        await direct.post("/reset_prefix_cache")
    except httpx.HTTPError:
        pass


async def direct_arm(direct: httpx.AsyncClient, payloads: list[dict], concurrency: int) -> float:
    """Seconds to send the payloads straight to vLLM, `concurrency` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one(payload):
        async with slots:
            response = await direct.post("/v1/chat/completions", json=payload)
            response.raise_for_status()

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in payloads))
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-url", help="a running vLLM (default: start one here)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS), help="questions for B and C")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds per arm (C)")
    parser.add_argument("--skip-answers", action="store_true", help="A only")
    parser.add_argument("--skip-throughput", action="store_true", help="A and B, not C")
    parser.add_argument("--dump-items", type=Path, help="write B's per-item results here (JSON)")
    args = parser.parse_args()
    missing = [p for p in PAGES if not (GIT_DOC / p).is_file()]
    if missing:
        sys.exit(f"git-doc pages missing ({len(missing)}): apt-get install git-doc")

    with tempfile.TemporaryDirectory(prefix="graft-bench-eval-") as tmp:
        async with engine_url(args.engine_url, Path(tmp) / "engine", DEFAULT_BASE_MODEL) as engine:
            settings = migrated_settings(Path(tmp) / "gateway", DEFAULT_BASE_MODEL, engine_urls=[engine],
                                         port=free_port())
            async with serve_subprocess(settings, Path(tmp) / "gateway.log") as url, \
                    httpx.AsyncClient(base_url=url, timeout=1800) as http, \
                    httpx.AsyncClient(base_url=engine, timeout=1800) as direct:
                await bench(http, direct, args)


async def bench(http, direct, args) -> None:
    await http.post("/v1/corpora", json={"name": "git-doc"})
    started = time.perf_counter()
    upload = await http.post("/v1/corpora/git-doc/documents", files=[
        ("files", (page, (GIT_DOC / page).read_bytes(), "text/html")) for page in PAGES])
    await wait_job(http, upload.json()["job_id"])
    corpus = (await http.get("/v1/corpora/git-doc")).json()
    print(f"git-doc: {len(PAGES)} pages, {corpus['chunks']} chunks in {time.perf_counter() - started:.0f} s; "
          f"{len(QUESTIONS)} questions, k={K}")

    plain = await retrieval_table(http, "git-doc", QUESTIONS)
    rebuild = await http.post("/v1/corpora/git-doc/rebuild", json={"contextual_headers": True})
    if rebuild.status_code != 202:
        sys.exit(f"rebuild refused: {rebuild.text}")
    await wait_job(http, rebuild.json()["job_id"])
    headed = await retrieval_table(http, "git-doc", QUESTIONS)
    print("\nA. retrieval (search API, scored by evaluation.metrics)")
    print(f"{'mode':<8} {'hit@5 plain':>12} {'hit@5 headers':>14} {'MRR plain':>10} {'MRR headers':>12}")
    for mode in MODES:
        print(f"{mode:<8} {plain[mode][0]:>12.3f} {headed[mode][0]:>14.3f} {plain[mode][1]:>10.3f} "
              f"{headed[mode][1]:>12.3f}")
    best = max(plain["hybrid"][0], headed["hybrid"][0])
    print(f"hybrid hit@5 goal >= {GOAL_HYBRID_HIT}: {'PASS' if best >= GOAL_HYBRID_HIT else 'FAIL'} ({best:.3f})")
    if args.skip_answers:
        return

    questions = QUESTIONS[:args.questions]
    items = [{"id": str(i + 1), "question": q, "answers": answers, "document_ids": pages}
             for i, (q, pages, answers) in enumerate(questions)]
    await http.post("/v1/evalsets", json={"name": "git-doc-qa", "items": items})
    await http.put("/v1/domains/git", json={"corpora": ["git-doc"], "retrieval": {"k": 4, "mode": "hybrid"}})
    open_book = await run_eval(http, domain="git", evalset="git-doc-qa", max_tokens=args.max_tokens)
    closed = await run_eval(http, domain="git", evalset="git-doc-qa", max_tokens=args.max_tokens, retrieval=False)
    print(f"\nB. answers ({len(items)} questions, max_tokens {args.max_tokens}, temperature 0, base model)")
    print(f"{'':<16} {'answer_contains':>16} {'answer_f1':>10} {'exact_match':>12} {'hit@4':>6} {'p50 ms':>8}")
    for label, run in (("with retrieval", open_book), ("closed book", closed)):
        m = run["metrics"]
        hit = "-" if m["hit_at_k"] is None else f"{m['hit_at_k']:.3f}"
        print(f"{label:<16} {m['answer_contains']:>16.3f} {m['answer_f1']:>10.3f} {m['exact_match']:>12.3f} {hit:>6} "
              f"{m['latency_p50_ms']:>8.0f}")
    if args.dump_items:
        dump = {label: {"metrics": run["metrics"],
                        "items": (await http.get(f"/v1/evals/{run['id']}/items")).json()["items"]}
                for label, run in (("with retrieval", open_book), ("closed book", closed))}
        dump["evalset"] = items
        args.dump_items.write_text(json.dumps(dump, indent=1))
    if args.skip_throughput:
        return

    # C: the eval's prompts, rebuilt with the gateway's PromptBuilder from the passages it used.
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_BASE_MODEL)
    prompts = PromptBuilder(tokenizer, 2048)
    payloads = []
    for item in items:
        answer = (await http.post("/v1/chat/completions", json={
            "model": "git", "messages": [{"role": "user", "content": item["question"]}], "max_tokens": 1})).json()
        passages = [Passage(c["corpus"], c["document_id"], c["chunk_id"], c["score"], c["text"]) for c in
                    answer["citations"]]
        messages, _ = prompts.build_chat([{"role": "user", "content": item["question"]}], passages, None,
                                         args.max_tokens)
        payloads.append({"model": answer["adapter"], "messages": messages, "temperature": 0,
                         "max_tokens": args.max_tokens})
    concurrency = 2  # GRAFT_EVAL_CONCURRENCY's default, which the gateway here runs with
    graft_s, direct_s = [], []
    for round_ in range(args.rounds):
        for arm in (("graft", "direct") if round_ % 2 == 0 else ("direct", "graft")):
            await reset_prefix_cache(direct)
            if arm == "graft":
                started = time.perf_counter()
                await run_eval(http, domain="git", evalset="git-doc-qa", max_tokens=args.max_tokens)
                graft_s.append(time.perf_counter() - started)
            else:
                direct_s.append(await direct_arm(direct, payloads, concurrency))
    graft_qps, direct_qps = len(items) * len(graft_s) / sum(graft_s), len(items) * len(direct_s) / sum(direct_s)
    ratio = graft_qps / direct_qps
    print(f"\nC. throughput ({args.rounds} rounds per arm, ABBA, concurrency {concurrency}, prefix cache emptied)")
    print(f"graft evaluation {graft_qps:.2f} q/s, same prompts straight to vLLM {direct_qps:.2f} q/s: "
          f"ratio {ratio:.3f} (goal >= {GOAL_THROUGHPUT}: {'PASS' if ratio >= GOAL_THROUGHPUT else 'FAIL'})")


if __name__ == "__main__":
    asyncio.run(main())
