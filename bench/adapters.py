"""Generation throughput with requests spread over 1, 4 and 8 LoRA adapters, as a ratio to the base model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/adapters.py   # own local vLLM; ~7 min in all
    .venv/bin/python bench/adapters.py --engine-url http://127.0.0.1:8100  # reuse an engine: it must run
        with --enable-lora, --max-loras >= the largest arm, --max-lora-rank >= 16 and runtime LoRA updating
    .venv/bin/python bench/adapters.py --probe none --max-lora-rank 8 \
        --engine-args "--lora-target-modules q_proj v_proj"     # an engine that wraps only what adapters use

Set-up: distinct untrained LoRAs (rank 8 on q_proj+v_proj by default), each uploaded through graft's
REST API and bound to its own domain (no corpora, so no retrieval); one more domain with no adapter
is the base arm. The arm with k adapters sends request i to domain i mod k. Every arm sends the same
prompts (cycled) from the same number of closed-loop clients through an in-process gateway, with
temperature 0 and max_tokens + ignore_eos, so every request generates the same number of tokens.
After a warm-up pass, arms alternate in rounds (base, 1, 4, 8, probe, then reversed, ...) to cancel
drift on a shared machine; an arm's throughput is its requests over its summed batch wall time, and
its ratio is that over the base arm's.

What limits it, measured rather than guessed: a probe arm of 8 adapters of another shape (`--probe
rank16` or `--probe all` for all seven projections; `none` skips it), and per arm the engine's own
/metrics deltas over its batches: tokens per engine step (prompt + generated: the batch size), mean
inter-token latency (step time) and mean queue time (requests deferred, e.g. because --max-loras
bounds how many adapters one batch may hold; graft's Settings.max_loras, default 8).
"""

import argparse
import asyncio
import os
import re
import shlex
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from bench.common import (DEFAULT_BASE_MODEL, TARGETS, Req, bench_stack, bind, chat_body,  # noqa: E402
                          one_request, percentile, upload)
from tests.adapters_store.lora_factory import make_lora  # noqa: E402

PROMPTS = (
    "Write a short paragraph about the history of the city of Lyon.",
    "Explain how the gears of a bicycle work.",
    "Describe the water cycle to a ten-year-old.",
    "List three uses of copper and why it suits each of them.",
    "Tell a short story about a lighthouse keeper and a storm.",
    "Give advice to someone who is learning to bake bread.",
    "What makes a good photograph at night?",
    "Compare tea and coffee as morning drinks.",
)
S_LORA_REFERENCE = 0.95  # S-LoRA / Punica on GPU: many adapters in one batch at > 0.95 of base throughput
WARMUP_TOKENS = 4
ENGINE_COUNTERS = ("vllm:iteration_tokens_total_sum", "vllm:iteration_tokens_total_count",
                   "vllm:inter_token_latency_seconds_sum", "vllm:inter_token_latency_seconds_count",
                   "vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count",
                   "vllm:num_preemptions_total")


@dataclass
class Arm:
    label: str
    domains: list[str]  # request i goes to domains[i % len(domains)]
    expected: set[str]  # engine model names its answers may carry
    reqs: list[Req] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)  # one per round
    engine: Counter = field(default_factory=Counter)  # /metrics deltas over its measured batches
    shape: str = ""  # the probe's adapter shape, when it differs from the main arms'

    def bodies(self, n: int, max_tokens: int) -> list[dict]:
        return [chat_body(self.domains[i % len(self.domains)], PROMPTS[i % len(PROMPTS)], max_tokens)
                for i in range(n)]

    def rate(self) -> float:
        return len(self.reqs) / sum(self.walls)

    def round_ratios(self, base: "Arm") -> list[float]:
        return [bw / w for w, bw in zip(self.walls, base.walls)]  # same requests in every batch

    def engine_mean(self, name: str, scale: float = 1.0) -> float:
        count = self.engine[f"{name}_count"]
        return self.engine[f"{name}_sum"] / count * scale if count else float("nan")


# --- set-up ----------------------------------------------------------------------------------

def probe_shape(args) -> tuple[str, int, str] | None:
    """(label, rank, targets) of the probe arm: the main arms' adapters with one thing changed."""
    return {"none": None, "rank16": ("rank 16", 16, args.targets),
            "all": ("all 7 projections", args.rank, "all")}[args.probe]


def make_folders(work: Path, base_model: str, tag: str, n: int, rank: int, targets: str) -> list[Path]:
    return [make_lora(Path(base_model), work / f"{tag}-{i}", rank=rank, target_modules=TARGETS[targets],
                      seed=i + 1) for i in range(n)]


async def adapter_arms(http: httpx.AsyncClient, prefix: str, folders: list[Path], counts: list[int],
                       shape: str = "") -> list[Arm]:
    """Upload each folder as its own adapter, bind it to its own domain; one arm per count."""
    domains, names = [], []
    for i, folder in enumerate(folders):
        name = f"{prefix}-{i}"
        version = (await upload(http, name, folder))["version"]
        await bind(http, name, name, version)
        domains.append(name)
        names.append(f"{name}@{version}")
    return [Arm(f"{k} adapter{'s' if k > 1 else ''}" + (f", {shape}" if shape else ""), domains[:k],
                set(names[:k]), shape=shape) for k in counts]


# --- measuring -------------------------------------------------------------------------------

async def run_batch(http: httpx.AsyncClient, bodies: list[dict], concurrency: int) -> tuple[list[Req], float]:
    """Send `bodies` from `concurrency` closed-loop clients; the answers and the batch wall time."""
    pending, done = iter(bodies), []

    async def client() -> None:
        for body in pending:  # shared iterator: each client takes the next request
            done.append(await one_request(http, body))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, time.perf_counter() - t0


async def engine_metrics(engine: httpx.AsyncClient) -> tuple[Counter, str | None]:
    """The tracked vLLM counters (summed over label sets) and the engine's max_loras, if it says."""
    text = (await engine.get("/metrics")).text
    counters = Counter()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name in ENGINE_COUNTERS:
            counters[name] += float(value)
    max_lora = re.search(r'vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', text)
    return counters, max_lora.group(1) if max_lora else None


async def measure(http, engine, arm: Arm, args) -> None:
    before, _ = await engine_metrics(engine)
    reqs, wall = await run_batch(http, arm.bodies(args.requests, args.max_tokens), args.concurrency)
    after, _ = await engine_metrics(engine)
    arm.reqs += reqs
    arm.walls.append(wall)
    arm.engine.update({k: after[k] - before[k] for k in ENGINE_COUNTERS})


async def run_rounds(http, engine, arms: list[Arm], args) -> None:
    for arm in arms:  # warm-up: every adapter of every arm through a batch once, nothing recorded
        await run_batch(http, arm.bodies(max(args.concurrency, len(arm.domains)), WARMUP_TOKENS),
                        args.concurrency)
    print(f"warm-up done; {args.rounds} rounds of {len(arms)} arms", flush=True)
    for r in range(args.rounds):
        order = arms if r % 2 == 0 else arms[::-1]
        for arm in order:
            await measure(http, engine, arm, args)
        print(f"  round {r + 1}: " + ", ".join(f"{a.label} {args.requests / a.walls[-1]:.2f} req/s"
                                                for a in order), flush=True)


# --- report ----------------------------------------------------------------------------------

def problems(arm: Arm, max_tokens: int) -> list[str]:
    failed = [r for r in arm.reqs if not r.ok]
    wrong = [r for r in arm.reqs if r.ok and r.adapter not in arm.expected]
    short = [r for r in arm.reqs if r.ok and r.tokens != max_tokens]
    seen = {r.adapter for r in arm.reqs if r.ok}
    out = [f"{arm.label}: {len(failed)} failed, first: {failed[0].error}"] if failed else []
    out += [f"{arm.label}: {len(wrong)} answered by another model, e.g. {wrong[0].adapter}"] if wrong else []
    out += [f"{arm.label}: {len(short)} answers not {max_tokens} tokens"] if short else []
    out += [f"{arm.label}: answers came from {len(seen)} models, expected {len(arm.expected)}"] \
        if len(seen) != len(arm.expected) else []
    return out


def arm_row(arm: Arm, base: Arm, max_tokens: int) -> str:
    latencies = [r.end - r.start for r in arm.reqs if r.ok]
    rounds = arm.round_ratios(base)
    spread = f"{min(rounds):.2f}-{max(rounds):.2f}" if arm is not base else ""
    return (f"  {arm.label:<30} {arm.rate():6.2f} {arm.rate() * max_tokens:7.1f} "
            f"{percentile(latencies, 50) * 1000:8.0f} {percentile(latencies, 99) * 1000:8.0f} "
            f"{arm.rate() / base.rate():6.2f} {spread:>10}   "
            f"{arm.engine_mean('vllm:iteration_tokens_total'):8.1f} "
            f"{arm.engine_mean('vllm:inter_token_latency_seconds', 1000):7.0f} "
            f"{arm.engine_mean('vllm:request_queue_time_seconds', 1000):8.1f} "
            f"{arm.engine['vllm:num_preemptions_total']:6.0f}")


def limit_lines(base: Arm, lora: list[Arm], probe: Arm | None, max_loras: str | None) -> list[str]:
    """What the measurements say limits the LoRA arms (the largest arm against base)."""
    top, ratio = lora[-1], lora[-1].rate() / base.rate()
    batch_b, batch_t = (a.engine_mean("vllm:iteration_tokens_total") for a in (base, top))
    step_b, step_t = (a.engine_mean("vllm:inter_token_latency_seconds", 1000) for a in (base, top))
    smaller_batches = batch_t < 0.9 * batch_b
    spread = max(a.rate() for a in lora) / base.rate() - min(a.rate() for a in lora) / base.rate()
    noise = max(max(a.round_ratios(base)) - min(a.round_ratios(base)) for a in lora)
    lines = [f"  engine, {top.label} vs base: {batch_t:.1f} vs {batch_b:.1f} tokens per step, "
             f"{step_t:.0f} vs {step_b:.0f} ms between tokens ({step_t / step_b:.2f}x), mean queue "
             f"{top.engine_mean('vllm:request_queue_time_seconds', 1000):.0f} ms; max_loras = "
             f"{max_loras or '?'} (adapters one batch may hold)",
             f"  adapter count: {', '.join(f'{a.rate() / base.rate():.2f}' for a in lora)} for "
             f"{', '.join(str(len(a.domains)) for a in lora)} adapters (spread {spread:.2f}; one arm's "
             f"rounds differ by up to {noise:.2f})"]
    findings = ["smaller batches than base: scheduling (max_loras / queueing)" if smaller_batches
                else "batches as large as base's, slower steps: the per-step LoRA compute",
                "the number of adapters matters little" if spread <= max(0.05, noise)
                else f"the number of adapters moves the ratio by up to {spread:.2f}"]
    if probe is not None:
        change = probe.rate() / base.rate() / ratio - 1
        lines.append(f"  adapter shape: {probe.label} {probe.rate() / base.rate():.2f} vs {top.label} "
                     f"{ratio:.2f} ({change * 100:+.0f}%)")
        findings.append(f"{probe.shape} matters little" if abs(change) < 0.1
                        else f"{probe.shape}: {change * 100:+.0f}% throughput")
    lines += [f"  => limit: {'; '.join(findings)}.",
              "     (vLLM's CPU LoRA path is plain torch: each step, every token gathers its adapter's A/B "
              "slots, padded to --max-lora-rank, and runs einsums on every layer the engine wrapped: all "
              "7 projections unless --lora-target-modules narrows them; try --engine-args.)"]
    return lines


def report(arms: list[Arm], probe: Arm | None, args, max_loras: str | None) -> int:
    base, lora = arms[0], [a for a in arms[1:] if a is not probe]
    print()
    print(f"== generation throughput over LoRA adapters vs base: {args.concurrency} clients, "
          f"{args.requests} requests x {args.max_tokens} tokens per arm and round, {args.rounds} rounds, "
          f"rank {args.rank} on {args.targets} ==")
    print(f"  {'arm':<30} {'req/s':>6} {'tok/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6} "
          f"{'per round':>10}   {'tok/step':>8} {'ITL ms':>7} {'queue ms':>8} {'preem':>6}")
    for arm in arms:
        print(arm_row(arm, base, args.max_tokens))
    ratios = [a.rate() / base.rate() for a in lora]
    print(f"  reference: S-LoRA (GPU, custom kernels) keeps > {S_LORA_REFERENCE} of base throughput "
          f"with many adapters in one batch")
    print(f"  this CPU engine: {min(ratios):.2f}-{max(ratios):.2f} of base with "
          f"{'-'.join(str(len(a.domains)) for a in lora)} adapters "
          f"({'meets' if min(ratios) > S_LORA_REFERENCE else 'below'} the GPU reference)")
    for line in limit_lines(base, lora, probe, max_loras):
        print(line)
    issues = [p for arm in arms for p in problems(arm, args.max_tokens)]
    for issue in issues:
        print(f"  PROBLEM {issue}")
    return 1 if issues else 0


async def run(args) -> int:
    counts = sorted({int(k) for k in args.adapters.split(",")})
    probe = probe_shape(args)
    work = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="graft-bench-adapters-"))
    print(f"data dir: {work}", flush=True)
    t0 = time.perf_counter()  # also the start of the whole run
    folders = make_folders(work, args.base_model, "lora", counts[-1], args.rank, args.targets)
    probe_folders = (make_folders(work, args.base_model, "probe", counts[-1], probe[1], probe[2])
                     if probe else [])
    print(f"made {len(folders) + len(probe_folders)} untrained LoRAs in {time.perf_counter() - t0:.1f} s",
          flush=True)

    async with bench_stack(work / "gateway", args.base_model, args.engine_url, max_loras=args.max_loras,
                           max_lora_rank=args.max_lora_rank, engine_args=shlex.split(args.engine_args)) \
            as stack, httpx.AsyncClient(base_url=stack.engine_url, timeout=120) as engine:
        http = stack.http
        run_id = f"ab-{uuid.uuid4().hex[:6]}"  # fresh names, even on a reused engine
        await bind(http, f"{run_id}-base", None, None)
        arms = [Arm("base", [f"{run_id}-base"], {stack.settings.base_model_name})]
        arms += await adapter_arms(http, f"{run_id}-lora", folders, counts)
        probe_arm = None
        if probe:
            probe_arm = (await adapter_arms(http, f"{run_id}-probe", probe_folders, [counts[-1]],
                                            probe[0]))[0]
            arms.append(probe_arm)
        print(f"uploaded and bound {len(folders) + len(probe_folders)} adapters, 1 base domain", flush=True)
        await run_rounds(http, engine, arms, args)
        _, max_loras = await engine_metrics(engine)
        status = report(arms, probe_arm, args, max_loras)
        started = f"engine start {stack.engine_start_s:.0f} s, " if stack.engine_start_s is not None else ""
    print(f"  ({started}whole run {time.perf_counter() - t0:.0f} s)")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-url", help="reuse this vLLM instead of starting one (see above)")
    parser.add_argument("--engine-args", default="", help="extra vLLM flags for the engine started here")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--data-dir", help="default: a fresh temp dir")
    parser.add_argument("--adapters", default="1,4,8", help="adapter counts, one arm each")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="per arm and round")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating forward / reversed")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="qv")
    parser.add_argument("--probe", choices=("rank16", "all", "none"), default="rank16",
                        help="one more arm: the largest count with rank 16, or on all 7 projections")
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
