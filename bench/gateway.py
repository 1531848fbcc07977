"""graft vs. vLLM called directly, with the identical final prompts: latency and throughput.

    .venv/bin/python -m bench.gateway [--requests 24] [--max-tokens 16] [--concurrency 1,16]
                                      [--engine-url http://127.0.0.1:8100] [--gateway subprocess]
    .venv/bin/python -m bench.gateway --planner-only   # the planner's steps alone, no engine (~1 min)

Set-up: one vLLM engine (started here unless --engine-url), a migrated SQLite data dir, a corpus
of made-up documents uploaded over REST and a domain binding it (k=4, hybrid). Each question's
final engine payload is taken from graft's own planner (in-process, same data dir), so the
"direct" arm sends vLLM exactly what graft sends it. Both arms: temperature 0, fixed max_tokens,
ignore_eos, so every request generates the same number of tokens. vLLM's prefix cache is emptied
before every batch (an engine given with --engine-url needs VLLM_SERVER_DEV_MODE=1 for that), or
the arm that sends a question second would find its prompt cached.

The measured gateway runs as `python -m service serve` in its own process by default (as in
production, so the load generator does not share its event loop); `--gateway inprocess` runs it
in this process instead. Direct and graft batches alternate (ABBA rounds) after a warm-up, to
cancel drift on a shared machine. The retrieval share is the gateway's own
`graft_retrieval_seconds` (sum over the measured requests) / the client-seen graft latency sum.

Added latency: on a 2-core CPU engine the same request varies by hundreds of ms from run to run,
so the difference of the two arms' percentiles cannot resolve a few ms. Each graft response
carries a Server-Timing header with the time graft waited on the engine; client-seen latency
minus that is what graft itself added to that request (HTTP hop, planning, relaying), and its
p50 is what the goal is judged on. The arms' difference is printed beside it.
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httpx

from bench.common import (DEFAULT_BASE_MODEL, engine_url, free_port, migrated_settings, paired_ratio_interval,
                          percentile, serve_subprocess, wait_job)
from bench.lore import corpus_and_questions
from bench.planner_steps import planner_breakdown, print_breakdown

DOMAIN = "bench"
CORPUS = "bench-lore"
K, MODE = 4, "hybrid"
SYSTEM_PROMPT = "You are the archivist of the Vantress Isles. Answer briefly."
GOAL_THROUGHPUT_RATIO = 0.95
GOAL_ADDED_P50_MS = 15.0


def chat_body(question: str, max_tokens: int) -> dict:
    return {"model": DOMAIN, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}


# ---------------------------------------------------------------- set-up and graft's own plans


async def prepare(settings, questions: list[str], docs: list[dict], max_tokens: int) -> tuple[list[dict], dict]:
    """Create the corpus and domain through graft's REST API (in-process), then return the
    engine payload graft plans for each question, and a timing breakdown of the planner."""
    from service.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://graft", timeout=600) as http:
            (await http.post("/v1/corpora", json={"name": CORPUS})).raise_for_status()
            response = await http.post(f"/v1/corpora/{CORPUS}/documents", json={"documents": docs})
            response.raise_for_status()
            job = await wait_job(http, response.json()["job_id"])
            if job["status"] != "succeeded":
                raise RuntimeError(f"ingestion failed: {job}")
            (await http.put(f"/v1/domains/{DOMAIN}", json={
                "corpora": [CORPUS], "system_prompt": SYSTEM_PROMPT,
                "retrieval": {"k": K, "mode": MODE}})).raise_for_status()
            stats = (await http.get(f"/v1/corpora/{CORPUS}")).json()
        state = app.state.graft
        payloads = [(await state.planner.plan("chat", chat_body(q, max_tokens))).payload
                    for q in questions]
        breakdown = await planner_breakdown(state, [chat_body(q, max_tokens) for q in questions], DOMAIN, K)
    return payloads, {"documents": stats.get("documents"), "chunks": stats.get("chunks"),
                      "breakdown": breakdown}


# ---------------------------------------------------------------- the gateway under test


@contextlib.asynccontextmanager
async def gateway(kind: str, settings, log_path: Path):
    if kind == "inprocess":
        from tests.harness import running_gateway

        async with running_gateway(settings) as url:
            yield url
        return
    async with serve_subprocess(settings, log_path) as url:
        yield url


_METRIC = re.compile(r"^(graft_retrieval_seconds_(?:sum|count)|"
                     r"graft_http_request_seconds_sum\{method=\"POST\",route=\"/v1/chat/completions\"\})"
                     r" ([0-9.e+-]+)$", re.M)


async def scrape(http: aiohttp.ClientSession) -> dict[str, float]:
    async with http.get("/metrics") as response:
        text = await response.text()
    return {m.group(1).split("{")[0]: float(m.group(2)) for m in _METRIC.finditer(text)}


# ---------------------------------------------------------------- load generation and report


@dataclass
class Arm:
    latencies: list[float] = field(default_factory=list)  # seconds, client-seen
    by_job: dict[int, float] = field(default_factory=dict)  # job number -> latency: pairs the arms
    wall_s: float = 0.0
    tokens: int = 0
    prompt_tokens: dict[int, int] = field(default_factory=dict)  # question index -> tokens
    retrieval_s: float = 0.0
    retrieval_n: int = 0
    server_s: float = 0.0
    own_s: list[float] = field(default_factory=list)  # graft: client-seen - engine time (Server-Timing)
    plan_s: list[float] = field(default_factory=list)  # graft: planning (retrieval + prompt) time
    hop_s: list[float] = field(default_factory=list)  # graft: client-seen - handler time (HTTP hop)
    cold_batches: int = 0  # batches that started with vLLM's prefix cache emptied
    batches: int = 0

    def add(self, other: "Arm") -> None:
        self.latencies += other.latencies
        self.by_job.update(other.by_job)
        self.cold_batches += other.cold_batches
        self.batches += other.batches
        self.own_s += other.own_s
        self.plan_s += other.plan_s
        self.hop_s += other.hop_s
        self.wall_s += other.wall_s
        self.tokens += other.tokens
        self.prompt_tokens.update(other.prompt_tokens)


def load_client(base_url: str, concurrency: int) -> aiohttp.ClientSession:
    """The load generator's HTTP client for one arm. aiohttp, the library graft's engine client
    uses: the client's own per-request cost counts in graft's added time (client-seen - engine
    time), and graft's cost calling the engine is hidden in its engine time, so the two must match."""
    return aiohttp.ClientSession(base_url, connector=aiohttp.TCPConnector(limit=concurrency * 2),
                                 timeout=aiohttp.ClientTimeout(total=600), trust_env=False)


async def run_batch(http: aiohttp.ClientSession, jobs: list[tuple[int, int, dict]], concurrency: int,
                    max_tokens: int) -> Arm:
    arm, gate = Arm(), asyncio.Semaphore(concurrency)

    async def one(job: int, index: int, body: dict) -> None:
        async with gate:
            started = time.perf_counter()
            async with http.post("/v1/chat/completions", json=body) as response:
                status, content = response.status, await response.read()
            elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{response.url}: {status} {content[:300]!r}")
        usage = json.loads(content)["usage"]
        if usage["completion_tokens"] != max_tokens:
            raise RuntimeError(f"expected {max_tokens} generated tokens, got {usage}")
        arm.latencies.append(elapsed)
        arm.by_job[job] = elapsed
        timing = _server_timing_ms(response.headers.get("server-timing", ""))
        if "engine" in timing:
            arm.own_s.append(elapsed - timing["engine"] / 1000)
            arm.plan_s.append(timing["plan"] / 1000)
            arm.hop_s.append(elapsed - timing["gateway"] / 1000)
        arm.tokens += usage["completion_tokens"]
        arm.prompt_tokens[index] = usage["prompt_tokens"]

    started = time.perf_counter()
    await asyncio.gather(*(one(*job) for job in jobs))
    arm.wall_s = time.perf_counter() - started
    return arm


def _server_timing_ms(header: str) -> dict[str, float]:
    """{"retrieval": ms, "plan": ms, "engine": ms, "gateway": ms} from a graft response ({} from vLLM's)."""
    return {name: float(ms) for name, ms in re.findall(r"(\w+);dur=([0-9.]+)", header)}


async def reset_prefix_cache(direct: aiohttp.ClientSession) -> bool:
    """Empty vLLM's prefix cache (a dev-mode endpoint: VLLM_SERVER_DEV_MODE=1) so that every batch
    starts cold. Both arms send the same prompts: otherwise the arm that sends a question second
    finds its prompt cached (a 1,220-token prompt here: 6.4 s cold, 1.7 s cached), and that, not
    graft, decides the ratio."""
    async with direct.post("/reset_prefix_cache") as response:
        return response.status == 200 and (await response.json()).get("success") is True


async def measure(direct: aiohttp.ClientSession, graft: aiohttp.ClientSession, bodies: dict[str, list[dict]],
                  concurrency: int, requests: int, rounds: int, max_tokens: int) -> dict[str, Arm]:
    n = len(bodies["graft"])

    def jobs(arm: str, start: int, count: int) -> list[tuple[int, int, dict]]:
        """The same questions, in the same order, for both arms: (job number, question index, body)."""
        return [(i, i % n, bodies[arm][i % n]) for i in range(start, start + count)]

    warm = max(concurrency, 4)
    for arm, http in (("direct", direct), ("graft", graft)):
        await reset_prefix_cache(direct)
        await run_batch(http, jobs(arm, 0, warm), concurrency, max_tokens)
    totals = {"direct": Arm(), "graft": Arm()}
    # A round keeps `concurrency` requests in flight for most of its time, or the level is not
    # the one measured: at least 2 x concurrency requests, in fewer rounds (2 at least) if need be.
    per_round = max(1, requests // rounds, 2 * concurrency)
    rounds = max(2, min(rounds, requests // per_round))
    for r in range(rounds):
        order = ("direct", "graft") if r % 2 == 0 else ("graft", "direct")
        for arm in order:
            http = graft if arm == "graft" else direct
            before = await scrape(graft) if arm == "graft" else None
            cold = await reset_prefix_cache(direct)
            result = await run_batch(http, jobs(arm, warm + r * per_round, per_round), concurrency,
                                     max_tokens)
            result.batches, result.cold_batches = 1, int(cold)
            if before is not None:
                after = await scrape(graft)
                totals[arm].retrieval_s += after["graft_retrieval_seconds_sum"] - before["graft_retrieval_seconds_sum"]
                totals[arm].retrieval_n += int(after["graft_retrieval_seconds_count"] - before["graft_retrieval_seconds_count"])
                totals[arm].server_s += (after["graft_http_request_seconds_sum"]
                                         - before["graft_http_request_seconds_sum"])
            totals[arm].add(result)
    return totals


def report(results: dict[int, dict[str, Arm]], meta: dict, args) -> None:
    line = "=" * 78
    print(line)
    print(f"graft vs direct vLLM  |  {meta['model']}  |  engine {meta['engine']}  |  gateway {args.gateway}")
    print(f"corpus: {meta['documents']} documents, {meta['chunks']} chunks  |  domain: k={K}, {MODE}  |  "
          f"{len(meta['questions'])} distinct questions")
    print(f"sampling: temperature 0, max_tokens {args.max_tokens}, ignore_eos  |  "
          f"prompt tokens mean {meta['prompt_mean']:.0f} (min {meta['prompt_min']}, max {meta['prompt_max']})")
    print(f"identical final prompts: {meta['identical']}")
    for concurrency, arms in results.items():
        d, g = arms["direct"], arms["graft"]
        rows = [("p50 latency (ms)", percentile(d.latencies, 50) * 1000, percentile(g.latencies, 50) * 1000),
                ("p99 latency (ms)", percentile(d.latencies, 99) * 1000, percentile(g.latencies, 99) * 1000),
                ("throughput (req/s)", len(d.latencies) / d.wall_s, len(g.latencies) / g.wall_s),
                ("generated tokens/s", d.tokens / d.wall_s, g.tokens / g.wall_s)]
        print(line)
        print(f"concurrency {concurrency}: {len(g.latencies)} measured requests per arm, "
              f"{g.batches} interleaved rounds (ABBA), warm-up {max(concurrency, 4)} per arm; "
              f"vLLM's prefix cache emptied before {d.cold_batches + g.cold_batches} of "
              f"{d.batches + g.batches} batches")
        print(f"  {'':24}{'direct':>12}{'graft':>12}{'graft/direct':>15}")
        for name, dv, gv in rows:
            print(f"  {name:24}{dv:12.1f}{gv:12.1f}{gv / dv:15.3f}")
        difference = rows[0][2] - rows[0][1]
        added = percentile(g.own_s, 50) * 1000
        ratio = rows[2][2] / rows[2][1]
        graft_sum = sum(g.latencies)
        share = g.retrieval_s / graft_sum if graft_sum else float("nan")
        print(f"  added latency per graft request (client-seen - engine time, Server-Timing): "
              f"p50 {added:.1f} ms, p99 {percentile(g.own_s, 99) * 1000:.1f} ms; of it planning "
              f"p50 {percentile(g.plan_s, 50) * 1000:.1f} ms, the HTTP hop to graft (client-seen - "
              f"graft's handler time) p50 {percentile(g.hop_s, 50) * 1000:.1f} ms")
        print(f"  difference of the arms' p50s: {difference:+.1f} ms, of their means: "
              f"{(statistics.mean(g.latencies) - statistics.mean(d.latencies)) * 1000:+.1f} ms "
              "(mostly engine run-to-run noise)")
        paired, low, high = paired_ratio_interval(d.by_job, g.by_job)
        print(f"  paired mean-latency ratio direct/graft {paired:.3f}, 95 % bootstrap interval "
              f"{low:.3f}-{high:.3f} over {len(d.by_job.keys() & g.by_job.keys())} request pairs "
              "(how far engine noise alone moves the throughput ratio)")
        print(f"  retrieval share of graft latency: {share * 100:.2f} %  "
              f"(graft_retrieval_seconds {g.retrieval_s * 1000 / max(g.retrieval_n, 1):.1f} ms mean over "
              f"{g.retrieval_n} requests; gateway-side request time {g.server_s * 1000 / max(g.retrieval_n, 1):.1f} "
              f"ms mean vs client-seen {statistics.mean(g.latencies) * 1000:.1f} ms)")
        if concurrency > 1:
            print_burst_floor(concurrency, meta["breakdown"])
        verdict_t = "PASS" if ratio >= GOAL_THROUGHPUT_RATIO else "FAIL"
        verdict_l = "PASS" if added <= GOAL_ADDED_P50_MS else "FAIL"
        print(f"  goal: throughput ratio {ratio:.3f} >= {GOAL_THROUGHPUT_RATIO}: {verdict_t}  |  "
              f"added p50 {added:.1f} ms <= {GOAL_ADDED_P50_MS:.0f} ms: {verdict_l}")
    print(line)
    print_breakdown(meta["breakdown"])
    print(line)


def print_burst_floor(concurrency: int, breakdown: dict[str, list[float]]) -> None:
    """Requests of equal length that vLLM batches together finish together, so at concurrency c
    the next c arrive together. Each plan is CPU work (mostly the query embedding); even with
    every core to itself, graft can start the median request of such a burst only after the
    plans ahead of it: ceil((c / 2) / cores) serial plans. No scheduling gets below that."""
    cores = len(os.sched_getaffinity(0))
    plan_ms = percentile(breakdown["planner.plan() end to end"], 50)
    waits = math.ceil(concurrency / 2 / cores)
    print(f"  floor for a burst of {concurrency} arriving together on {cores} cores: the median request's plan "
          f"ends after {waits} serial plans of {plan_ms:.1f} ms (p50 below) = {waits * plan_ms:.1f} ms")


async def planner_only(args) -> int:
    docs, questions = corpus_and_questions(args.documents)
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        # No engine: planning never calls it (completions would answer 503).
        settings = migrated_settings(Path(tmp), Path(args.base_model), port=free_port(),
                                     engine_urls=["http://127.0.0.1:9"])
        _, meta = await prepare(settings, questions, docs, args.max_tokens)
    print_breakdown(meta["breakdown"])
    return 0


async def main(args) -> int:
    if args.planner_only:
        return await planner_only(args)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    docs, questions = corpus_and_questions(args.documents)
    base_model = Path(args.base_model)
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        os.environ.setdefault("VLLM_SERVER_DEV_MODE", "1")  # the engine started here: /reset_prefix_cache
        async with engine_url(args.engine_url, tmp / "engine", base_model) as engine:
            print(f"[bench] engine {engine} ready after {time.perf_counter() - started:.0f}s", file=sys.stderr)
            settings = migrated_settings(tmp / "data", base_model, engine_urls=[engine], port=free_port())
            payloads, meta = await prepare(settings, questions, docs, args.max_tokens)
            print(f"[bench] corpus and plans ready after {time.perf_counter() - started:.0f}s", file=sys.stderr)
            bodies = {"graft": [chat_body(q, args.max_tokens) for q in questions], "direct": payloads}
            results = {}
            async with gateway(args.gateway, settings, tmp / "gateway.log") as url, \
                    load_client(engine, max(concurrencies)) as direct, load_client(url, max(concurrencies)) as graft:
                for concurrency in concurrencies:
                    results[concurrency] = await measure(direct, graft, bodies, concurrency, args.requests,
                                                         args.rounds, args.max_tokens)
                    print(f"[bench] concurrency {concurrency} done after {time.perf_counter() - started:.0f}s",
                          file=sys.stderr)
    seen_d = {i: t for arms in results.values() for i, t in arms["direct"].prompt_tokens.items()}
    seen_g = {i: t for arms in results.values() for i, t in arms["graft"].prompt_tokens.items()}
    same = [i for i in seen_g if seen_d.get(i) == seen_g[i]]
    tokens = list(seen_g.values())
    meta.update(model=base_model.name, engine="given" if args.engine_url else "local vLLM (CPU)",
                questions=questions, prompt_mean=statistics.mean(tokens), prompt_min=min(tokens),
                prompt_max=max(tokens),
                identical=f"engine-counted prompt tokens equal for {len(same)}/{len(seen_g)} questions")
    report(results, meta, args)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24,
                        help="measured requests per arm and concurrency level (default 24; a round "
                             "holds at least 2 x concurrency, so c=16 runs 2 rounds of 32)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved direct/graft rounds (default 4)")
    parser.add_argument("--max-tokens", type=int, default=16, help="generated tokens per request (default 16)")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels (default 1,16)")
    parser.add_argument("--documents", type=int, default=36, help="made-up documents in the corpus (default 36)")
    parser.add_argument("--engine-url", default=None, help="use this vLLM server instead of starting one")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL),
                        help="prepared HF model folder (must be what the engine serves)")
    parser.add_argument("--gateway", choices=("subprocess", "inprocess"), default="subprocess",
                        help="run the measured gateway as `python -m service serve` or in this process")
    parser.add_argument("--planner-only", action="store_true",
                        help="only time the planner's steps in process (no engine started)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
