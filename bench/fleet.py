"""graft's engine fleet on Ray Serve: what the Serve route adds, many adapters, cold loads (issue 29).

    .venv/bin/python -m bench.fleet                                          # ~15 min on 2 quiet cores (estimate)
    .venv/bin/python -m bench.fleet --requests 40 --adapters 1 8             # a smaller (b)
    .venv/bin/python -m bench.fleet --thousand                               # (b) with 1,000 adapters too
    .venv/bin/python -m bench.fleet --parts a --pairs 60                     # one part only

Set-up: a local Ray cluster started here as the tests start theirs (tests/ray_cluster.py: `ray start
--head` on free ports, stopped at the end), the fleet deployed on it with `ray_deploy.deploy` exactly
as `graft ray deploy` does (each replica one vLLM OpenAI server, started as the gateway's local engine;
max_model_len 1024, LoRA rank 8 on q_proj+v_proj, prefix caching off so that the arm that sends a
prompt second is not served from cache). Adapters are untrained rank-8 PEFT LoRAs: one made with PEFT,
the others copies of it with fresh random weights (seeded). They are registered in the fleet's catalog
as the gateway registers them, with a folder the replicas read (one node: a shared folder), except
where (c) says otherwise. Every request: a short chat prompt, temperature 0, `--max-tokens` generated
(ignore_eos), so every request does the same work. No gateway: requests go to Serve's proxy with the
adapter in the `serve_multiplexed_model_id` header, as the gateway's FleetClient sends them.

(a) The Serve route vs the same engine called directly: one replica; the direct arm is that
    replica's own vLLM (its URL from the catalog's replica report), so both arms reach the very same
    engine and nothing else differs. c=1: `--pairs` prompts each sent to both arms back to back, the
    order alternating (ABBA); added latency is the median of the per-prompt differences (route minus
    direct), throughput the requests over the summed latencies. c=`--concurrency`: `--rounds` rounds of
    `--requests` from closed-loop clients, arms in ABBA order; added latency is the median of the
    differences of the same job in both arms' batches (same bodies, same order) beside the difference
    of the arms' p50s. Goal: throughput ratio >= 0.95 and added p50 <= 10 ms.
(b) Throughput with requests spread over 1, 8, 32, 128 (and with --thousand 1,000) adapters, each
    request's adapter drawn from a Zipf law (s = `--zipf-s`, seeded) over the adapters ranked 0..N-1,
    as a ratio to the 1-adapter arm on the same replicas, with 1 replica and with 2 (`--replicas`).
    Each replica keeps `--adapters-per-replica` adapters (Serve's multiplexing LRU; vLLM's
    `--max-cpu-loras` is raised to match, so an adapter the replica holds stays in the engine). Arms
    share their adapter names (rank r is the same adapter in every arm), take one warm-up batch each,
    then alternate in rounds (1, 8, ..., then reversed). Goal: 128 adapters >= 0.8 of 1 adapter.
(c) Cold loads: at c=1 on one replica, requests to an adapter the replica holds ("resident") and to
    adapters no replica has seen, rotated in order: one registered with its shared folder (the
    replica loads it into vLLM), one with no folder the replica sees (it downloads the files over HTTP
    from a static file server here standing in for the gateway's files route, checks their sha256,
    then loads). p50, p99 and max of each, and their ratio to the resident one.

The machine is printed with the figures: with 2 replicas on 2 cores the replicas share the cores (each
replica's vLLM runs Ray's one-CPU share of threads, placed by the OS), so (b)'s 2-replica arm measures
routing and loading over two replicas, not twice the compute. The pieces: bench/fleet_setup.py.
"""

import argparse
import asyncio
import contextlib
import functools
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.utils import logging as hf_logging  # noqa: E402

from bench.adapters import PROMPTS  # noqa: E402
from bench.common import DEFAULT_BASE_MODEL, REPO, Req, chat_body, paired_ratio_interval, percentile  # noqa: E402
from bench.fleet_setup import (Route, adapter_name, deploy, fetched_source, file_server, fleet_settings, ms,  # noqa: E402
                               make_adapters, problems, register, replica_urls, run_batch, session)
from service.engine import ray_deploy  # noqa: E402
from service.engine.adapter_fetch import source_of  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.ray_cluster import ray_cluster  # noqa: E402

GOAL_THROUGHPUT_RATIO = 0.95
GOAL_ADDED_P50_MS = 10.0
GOAL_MANY_ADAPTERS = (128, 0.8)  # (adapters, throughput ratio to 1 adapter on the same replicas)
WARMUP_REQUESTS = 4


# --- (a) the Serve route vs the engine called directly -----------------------------------------

@dataclass
class Compared:
    """Both arms at one concurrency: per job (same body in both arms) its latency, and the walls."""

    concurrency: int
    reqs: dict[str, list[Req]] = field(default_factory=lambda: {"direct": [], "ray": []})
    by_job: dict[str, dict[int, float]] = field(default_factory=lambda: {"direct": {}, "ray": {}})
    wall: dict[str, float] = field(default_factory=lambda: {"direct": 0.0, "ray": 0.0})

    def add(self, arm: str, job: int, req: Req) -> None:
        self.reqs[arm].append(req)
        if req.ok:
            self.by_job[arm][job] = req.end - req.start

    def latencies(self, arm: str) -> list[float]:
        return [r.end - r.start for r in self.reqs[arm] if r.ok]

    def throughput(self, arm: str) -> float:
        return len(self.reqs[arm]) / self.wall[arm]

    def added(self) -> list[float]:
        jobs = self.by_job["direct"].keys() & self.by_job["ray"].keys()
        return [self.by_job["ray"][j] - self.by_job["direct"][j] for j in jobs]


async def part_a(direct: Route, ray: Route, args) -> list[Compared]:
    adapter = adapter_name(0)
    body = functools.partial(chat_body, adapter, max_tokens=args.max_tokens)
    for route in (ray, direct):  # the replica loads the adapter on the route's first request
        await run_batch(route, [body(PROMPTS[i % len(PROMPTS)]) for i in range(WARMUP_REQUESTS)], 1)

    serial = Compared(1)
    for job in range(args.pairs):
        for route in ((direct, ray) if job % 2 == 0 else (ray, direct)):
            req = await route.send(body(PROMPTS[job % len(PROMPTS)]))
            serial.add(route.label, job, req)
            serial.wall[route.label] += req.end - req.start
    print(f"  (a) c=1: {args.pairs} pairs done", flush=True)

    batched = Compared(args.concurrency)
    bodies = [body(PROMPTS[i % len(PROMPTS)]) for i in range(args.requests)]
    for r in range(args.rounds):
        for route in ((direct, ray) if r % 2 == 0 else (ray, direct)):
            reqs, wall = await run_batch(route, bodies, args.concurrency)
            for i, req in enumerate(reqs):
                batched.add(route.label, r * len(bodies) + i, req)
            batched.wall[route.label] += wall
        print(f"  (a) c={args.concurrency}: round {r + 1} of {args.rounds}: direct "
              f"{batched.throughput('direct'):.2f} req/s, ray {batched.throughput('ray'):.2f} req/s so far",
              flush=True)
    return [serial, batched]


def report_a(results: list[Compared], args) -> list[str]:
    print()
    print(f"== (a) Serve route vs the same replica's vLLM called directly: 1 replica, adapter {adapter_name(0)}, "
          f"{args.max_tokens} tokens per request ==")
    head = "".join(f"{f'direct c={c.concurrency}':>13} {f'ray c={c.concurrency}':>10} {'ratio':>7}  "
                   for c in results)
    print(f"  {'':<34}{head}")
    rows = [("p50 latency (ms)", ".0f", lambda c, a: ms(percentile(c.latencies(a), 50))),
            ("p99 latency (ms)", ".0f", lambda c, a: ms(percentile(c.latencies(a), 99))),
            ("throughput (req/s)", ".2f", lambda c, a: c.throughput(a))]
    for label, form, value in rows:
        cells = ""
        for c in results:
            d, r = value(c, "direct"), value(c, "ray")
            cells += f"{d:13{form}} {r:10{form}} {r / d:7.3f}  "
        print(f"  {label:<34}{cells}")
    verdicts, issues = [], []
    for c in results:
        ratio = c.throughput("ray") / c.throughput("direct")
        added = c.added()
        mean_ratio, low, high = paired_ratio_interval(c.by_job["direct"], c.by_job["ray"])
        p50_gap = ms(percentile(c.latencies("ray"), 50) - percentile(c.latencies("direct"), 50))
        print(f"  c={c.concurrency}: added latency per request (ray - direct, same body), p50 "
              f"{ms(statistics.median(added)):.1f} ms, p99 {ms(percentile(added, 99)):.1f} ms (n={len(added)}); "
              f"difference of the arms' p50s {p50_gap:.1f} ms; paired mean-latency ratio "
              f"{mean_ratio:.3f} (95 % bootstrap {low:.3f}-{high:.3f})")
        verdicts.append(f"c={c.concurrency}: throughput {ratio:.3f} "
                        f"({'PASS' if ratio >= GOAL_THROUGHPUT_RATIO else 'FAIL'} >= {GOAL_THROUGHPUT_RATIO}), "
                        f"added p50 {ms(statistics.median(added)):.1f} ms "
                        f"({'PASS' if ms(statistics.median(added)) <= GOAL_ADDED_P50_MS else 'FAIL'} "
                        f"<= {GOAL_ADDED_P50_MS:.0f} ms)")
        for arm in ("direct", "ray"):
            issues += problems(f"(a) {arm} c={c.concurrency}", c.reqs[arm], {adapter_name(0)}, args.max_tokens)
    for line in verdicts:
        print(f"  goal {line}")
    return issues


# --- (b) many adapters, Zipf -------------------------------------------------------------------

@dataclass
class SpreadArm:
    adapters: int
    reqs: list[Req] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    touched: set[int] = field(default_factory=set)

    def bodies(self, count: int, tag: str, args) -> list[dict]:
        """`count` requests, each to an adapter drawn from Zipf(s) over ranks 0..N-1 (seeded by `tag`)."""
        rng = random.Random(f"{args.seed}-{self.adapters}-{tag}")
        weights = [1 / (rank ** args.zipf_s) for rank in range(1, self.adapters + 1)]
        picks = rng.choices(range(self.adapters), weights=weights, k=count)
        if tag != "warm-up":
            self.touched.update(picks)
        return [chat_body(adapter_name(rank), PROMPTS[i % len(PROMPTS)], args.max_tokens)
                for i, rank in enumerate(picks)]

    def rate(self) -> float:
        return len(self.reqs) / sum(self.walls)


async def part_b(ray: Route, replicas: int, args) -> list[SpreadArm]:
    arms = [SpreadArm(n) for n in args.adapters]
    for arm in arms:
        await run_batch(ray, arm.bodies(args.concurrency, "warm-up", args), args.concurrency)
    for r in range(args.rounds):
        for arm in (arms if r % 2 == 0 else arms[::-1]):
            reqs, wall = await run_batch(ray, arm.bodies(args.requests, f"round-{r}", args), args.concurrency)
            arm.reqs += reqs
            arm.walls.append(wall)
        print(f"  (b) {replicas} replica(s), round {r + 1} of {args.rounds}: "
              + ", ".join(f"{a.adapters}: {args.requests / a.walls[-1]:.2f} req/s" for a in arms), flush=True)
    return arms


def report_b(results: dict[int, list[SpreadArm]], args) -> list[str]:
    print()
    print(f"== (b) throughput over adapters, Zipf s={args.zipf_s} (seed {args.seed}), c={args.concurrency}, "
          f"{args.requests} requests per arm and round, {args.rounds} rounds, {args.adapters_per_replica} "
          f"adapters per replica, ratio to 1 adapter on the same replicas ==")
    configs = sorted(results)
    head = "".join(f"{f'{n} rep. req/s':>14} {'ratio':>6} {'per round':>10} {'p50 ms':>7} {'p99 ms':>7}  "
                   for n in configs)
    print(f"  {'adapters':>8} {'touched':>8}  {head}")
    issues, verdicts = [], []
    for i, n_adapters in enumerate(args.adapters):
        cells = ""
        for n in configs:
            arm, base = results[n][i], results[n][0]
            rounds = [bw / w for w, bw in zip(arm.walls, base.walls)]
            latencies = [r.end - r.start for r in arm.reqs if r.ok]
            cells += (f"{arm.rate():14.2f} {arm.rate() / base.rate():6.2f} "
                      f"{f'{min(rounds):.2f}-{max(rounds):.2f}':>10} {ms(percentile(latencies, 50)):7.0f} "
                      f"{ms(percentile(latencies, 99)):7.0f}  ")
            issues += problems(f"(b) {n_adapters} adapters, {n} replica(s)", arm.reqs,
                               {adapter_name(k) for k in range(n_adapters)}, args.max_tokens)
            if n_adapters == GOAL_MANY_ADAPTERS[0]:
                ratio = arm.rate() / base.rate()
                verdicts.append(f"{n} replica(s): {n_adapters} adapters at {ratio:.2f} of 1 adapter "
                                f"({'PASS' if ratio >= GOAL_MANY_ADAPTERS[1] else 'FAIL'} >= {GOAL_MANY_ADAPTERS[1]})")
        touched = len(results[configs[0]][i].touched)
        print(f"  {n_adapters:8d} {touched:8d}  {cells}")
    print("  (touched: distinct adapters the measured requests named, first replica setting)")
    if max(configs) > 1:
        print(f"  note: {max(configs)} replicas on this machine's {os.cpu_count()} cores share them (vLLM's CPU "
              "backend binds every replica's threads to the same cores unless VLLM_CPU_OMP_THREADS_BIND differs): "
              "these columns measure routing and loading over replicas, not more compute")
    for line in verdicts:
        print(f"  goal {line}")
    return issues


# --- (c) cold loads ----------------------------------------------------------------------------

COLD_ARMS = ("resident", "cold, shared folder", "cold, fetched over HTTP")


def cold_sources(folders: list[Path], root: Path, files_url: str, count: int) -> dict[str, dict]:
    """`count` never-seen adapter names per cold arm (the folders reused: a new name is a new load)."""
    sources = {}
    for j in range(count):
        folder = folders[j % len(folders)]
        sources[f"cold-shared-{j}@1"] = source_of(folder, None, shared=True)
        sources[f"cold-fetched-{j}@1"] = fetched_source(folder, root, files_url)
    return sources


async def part_c(ray: Route, args) -> dict[str, list[Req]]:
    names = {"resident": lambda j: adapter_name(0), "cold, shared folder": lambda j: f"cold-shared-{j}@1",
             "cold, fetched over HTTP": lambda j: f"cold-fetched-{j}@1"}
    await ray.send(chat_body(adapter_name(0), PROMPTS[0], args.max_tokens))  # resident from here on
    results: dict[str, list[Req]] = {arm: [] for arm in COLD_ARMS}
    for j in range(args.cold):
        shift = j % len(COLD_ARMS)
        for arm in COLD_ARMS[shift:] + COLD_ARMS[:shift]:
            results[arm].append(await ray.send(chat_body(names[arm](j), PROMPTS[j % len(PROMPTS)],
                                                         args.max_tokens)))
    print(f"  (c) {args.cold} requests per arm done", flush=True)
    return results


def report_c(results: dict[str, list[Req]], args) -> list[str]:
    print()
    print(f"== (c) cold loads vs a resident adapter: 1 replica, c=1, arms rotated, {args.cold} requests each ==")
    print(f"  {'arm':<26} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p50/res.':>9} {'p99/res.':>9}")
    resident = [r.end - r.start for r in results["resident"] if r.ok]
    issues = []
    for arm, reqs in results.items():
        latencies = [r.end - r.start for r in reqs if r.ok]
        print(f"  {arm:<26} {len(latencies):4d} {ms(percentile(latencies, 50)):8.0f} "
              f"{ms(percentile(latencies, 99)):8.0f} {ms(max(latencies, default=float('nan'))):8.0f} "
              f"{percentile(latencies, 50) / percentile(resident, 50):9.2f} "
              f"{percentile(latencies, 99) / percentile(resident, 99):9.2f}")
        issues += problems(f"(c) {arm}", reqs, None, args.max_tokens)
    if args.cold < 100:
        print(f"  (p99 of {args.cold} requests is their maximum: read it with the count)")
    return issues


# --- the run -----------------------------------------------------------------------------------

async def measure(settings: Settings, replicas: int, sources: dict[str, dict], args) -> dict:
    """One fleet shape's parts: (a), (b), (c) on one replica, (b) alone on more."""
    out = {}
    async with session(settings.ray_serve_url, args.concurrency) as proxy:
        await register(proxy, sources)
        ray = Route("ray", proxy, multiplexed=True)
        if replicas == 1 and "a" in args.parts:
            [url] = await replica_urls(proxy, 1)
            async with session(url, args.concurrency) as engine:
                out["a"] = await part_a(Route("direct", engine, multiplexed=False), ray, args)
        if "b" in args.parts:
            out["b"] = await part_b(ray, replicas, args)
        if replicas == 1 and "c" in args.parts:
            out["c"] = await part_c(ray, args)
    return out


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores, load average {load}, commit {commit.stdout.strip() or '?'}"


def run(args) -> int:
    t0 = time.perf_counter()
    work = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="graft-bench-fleet-"))
    print(f"data dir: {work}; {machine()}", flush=True)
    needed = max([*args.adapters, 1] if "b" in args.parts else [1])
    folders = make_adapters(work, Path(args.base_model), needed, args.rank, args.seed)
    print(f"made {len(folders)} untrained LoRAs (rank {args.rank}, q_proj+v_proj) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    sources = {adapter_name(i): source_of(folder, None, shared=True) for i, folder in enumerate(folders)}
    replica_counts = sorted(set(args.replicas)) if "b" in args.parts else [1]
    results: dict[int, dict] = {}
    with contextlib.ExitStack() as stack:
        if "c" in args.parts:
            files_url = stack.enter_context(file_server(work))
            sources |= cold_sources(folders, work, files_url, args.cold)
        # One CPU per replica as Ray counts them (vLLM itself uses every core it sees).
        cluster = stack.enter_context(ray_cluster(num_cpus=max(*replica_counts, os.cpu_count() or 1)))
        settings = fleet_settings(cluster, args, work)
        print(f"Ray cluster at {cluster.address}, Serve proxy on port {cluster.serve_port}", flush=True)
        try:
            for replicas in replica_counts:
                print(f"deployed {replicas} replica(s) in {deploy(settings, replicas, args):.0f} s", flush=True)
                results[replicas] = asyncio.run(measure(settings, replicas, sources, args))
        finally:
            with contextlib.suppress(Exception):
                ray_deploy.down(settings)
    issues = []
    print()
    print(f"== engine fleet on Ray Serve: SmolLM2-135M on vLLM's CPU backend, {args.max_tokens} tokens per "
          f"request, temperature 0; {machine()} (at the end) ==")
    if "a" in args.parts:
        issues += report_a(results[1]["a"], args)
    if "b" in args.parts:
        issues += report_b({n: r["b"] for n, r in results.items()}, args)
    if "c" in args.parts:
        issues += report_c(results[1]["c"], args)
    for issue in issues:
        print(f"  PROBLEM {issue}")
    print(f"  (whole run {time.perf_counter() - t0:.0f} s)")
    if not args.data_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if issues else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abc", help="which of (a), (b), (c) to run, e.g. `ab`")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--data-dir", help="default: a fresh temp dir, removed at the end")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8, help="(a)'s second level and (b)")
    parser.add_argument("--pairs", type=int, default=24, help="(a) c=1: prompts sent to both arms")
    parser.add_argument("--requests", type=int, default=24, help="(a) c>1 and (b): per arm and round")
    parser.add_argument("--rounds", type=int, default=2, help="(a) c>1 and (b): rounds, alternating order")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32, 128], help="(b) adapter counts")
    parser.add_argument("--thousand", action="store_true", help="(b) with 1,000 adapters too (long)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="(b) replica counts")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", type=int, default=16, help="(c) requests per arm")
    parser.add_argument("--adapters-per-replica", type=int, default=16, help="Serve's LRU bound per replica")
    parser.add_argument("--max-loras", type=int, default=8, help="vLLM --max-loras (adapters in one batch)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--engine-start-timeout", type=float, default=900,
                        help="seconds a replica's vLLM may take to start (it runs niced under Ray: slow on a busy machine)")
    args = parser.parse_args()
    args.adapters = sorted(set(args.adapters) | ({1000} if args.thousand else set()) | {1})
    if args.adapters_per_replica < len(COLD_ARMS):
        parser.error(f"--adapters-per-replica must be >= {len(COLD_ARMS)} (c keeps one adapter resident)")
    hf_logging.disable_progress_bar()
    sys.exit(run(args))


if __name__ == "__main__":
    main()
