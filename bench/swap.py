"""Latency of requests that overlap a zero-downtime adapter swap, against steady state.

One adapter with two versions (untrained PEFT LoRAs, rank 8 by default on q_proj+v_proj; `--targets
all` for all seven projections), one domain bound to v1. C clients keep asking the domain for
exactly `--max-tokens` tokens (ignore_eos) for the whole run:

    warm-up | steady state (T s) | gap | swap v1->v2 | gap | rollback v2->v1 | gap | ... (cycles)

Steady-state latencies: requests inside the steady window; steady throughput: requests completed
in it per second. Swap latencies: requests whose [start, end] overlaps a swap call ([POST sent,
answer received]); a second column widens the window to the moment the old version is gone from
the engine (drain + unload, seen by polling the engine's /v1/models). Also printed: the swap call's
duration, the server's `swap_seconds`, failed requests (must be 0), and a direct
`/v1/load_lora_adapter` for a fresh name, idle and under load.

    .venv/bin/python bench/swap.py                      # own local vLLM (about 1 min to start)
    .venv/bin/python bench/swap.py --engine-url http://127.0.0.1:8100   # reuse an engine
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from bench.common import (DEFAULT_BASE_MODEL, TARGETS, Req, bench_stack, bind, chat_body,  # noqa: E402
                          fmt_ms, one_request, percentile, upload)
from tests.adapters_store.lora_factory import make_lora  # noqa: E402

PROMPT = "Write a short paragraph about the history of the city of Lyon."


# --- the swap benchmark ----------------------------------------------------------------------

async def closed_loop(http, body: dict, stop: asyncio.Event, log: list[Req]) -> None:
    while not stop.is_set():
        log.append(await one_request(http, body))


async def engine_models(engine: httpx.AsyncClient) -> set[str]:
    return {m["id"] for m in (await engine.get("/v1/models")).json()["data"]}


async def wait_unloaded(engine: httpx.AsyncClient, name: str, timeout_s: float = 90) -> float:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if name not in await engine_models(engine):
            return time.perf_counter()
        await asyncio.sleep(0.02)
    return float("nan")


@dataclass
class SwapEvent:
    kind: str
    old: str
    new: str
    start: float
    end: float
    server_s: float
    unloaded: float


async def do_swap(http, engine, domain: str, kind: str, body: dict | None, old: str) -> SwapEvent:
    path = f"/v1/domains/{domain}/adapter" if kind == "swap" else f"/v1/domains/{domain}/rollback"
    start = time.perf_counter()
    response = await http.post(path, json=body)
    end = time.perf_counter()
    response.raise_for_status()
    data = response.json()
    unloaded = await wait_unloaded(engine, old)
    return SwapEvent(kind, old, data["engine_model"], start, end, data["swap_seconds"], unloaded)


async def direct_load(engine: httpx.AsyncClient, path: str, repeats: int) -> list[float]:
    """Seconds of /v1/load_lora_adapter for fresh names (each unloaded again afterwards)."""
    times = []
    for _ in range(repeats):
        name = f"direct-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        response = await engine.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
        (await engine.post("/v1/unload_lora_adapter", json={"lora_name": name})).raise_for_status()
    return times


def overlaps(r: Req, start: float, end: float) -> bool:
    return r.start < end and r.end > start


def stats_row(label: str, values: list[float], base: tuple[float, float] | None) -> str:
    if not values:
        return f"  {label:<38} {'n=0':>6}"
    p50, p99 = percentile(values, 50), percentile(values, 99)
    row = f"  {label:<38} {len(values):6d} {fmt_ms(p50)} {fmt_ms(p99)} {fmt_ms(max(values))}"
    if base:
        row += f"   {p50 / base[0]:6.2f}x {p99 / base[1]:6.2f}x"
    return row


async def run(args) -> int:
    targets = TARGETS[args.targets]
    work = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="graft-bench-swap-"))
    print(f"data dir: {work}", flush=True)
    t0 = time.perf_counter()
    loras = {v: make_lora(Path(args.base_model), work / f"lora-v{v}", rank=args.rank,
                          target_modules=targets, seed=v, steps=0) for v in (1, 2)}
    print(f"made 2 untrained LoRAs (rank {args.rank}, {'+'.join(targets)}) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)

    async with bench_stack(work / "gateway", args.base_model, args.engine_url, max_loras=args.max_loras,
                           max_lora_rank=args.max_lora_rank) as stack, \
            httpx.AsyncClient(base_url=stack.engine_url, timeout=120) as engine:
        http = stack.http
        name = f"swapbench-{uuid.uuid4().hex[:6]}"  # fresh engine names even on a reused engine
        domain = name
        for version in (1, 2):
            await upload(http, name, loras[version])
        bind_s = await bind(http, domain, name, 1)
        print(f"adapter {name}: v1, v2 uploaded; domain {domain} -> {name}@1 in {bind_s:.2f} s", flush=True)
        direct_path = str(loras[2])  # same bytes as v2; the engine reads it from this disk

        idle_load = await direct_load(engine, direct_path, args.load_repeats)

        body = chat_body(domain, PROMPT, args.max_tokens)
        stop, log = asyncio.Event(), []
        clients = [asyncio.create_task(closed_loop(http, body, stop, log)) for _ in range(args.concurrency)]
        print(f"load: {args.concurrency} clients, max_tokens={args.max_tokens}, ignore_eos; "
              f"warm-up {args.warmup:.0f} s, steady {args.steady:.0f} s, then {args.cycles} x "
              f"(swap, rollback) {args.gap:.0f} s apart", flush=True)
        events: list[SwapEvent] = []
        try:
            await asyncio.sleep(args.warmup)
            steady_start = time.perf_counter()
            await asyncio.sleep(args.steady)
            steady_end = time.perf_counter()
            current = f"{name}@1"
            for _ in range(args.cycles):
                await asyncio.sleep(args.gap)
                events.append(await do_swap(http, engine, domain, "swap", {"adapter": name, "version": 2},
                                            current))
                current = events[-1].new
                await asyncio.sleep(args.gap)
                events.append(await do_swap(http, engine, domain, "rollback", None, current))
                current = events[-1].new
                print(f"  cycle {len(events) // 2}: swap {events[-2].end - events[-2].start:.2f} s, "
                      f"rollback {events[-1].end - events[-1].start:.2f} s", flush=True)
            await asyncio.sleep(args.gap)
            loaded_busy = await direct_load(engine, direct_path, args.load_repeats)
            await asyncio.sleep(1)
        finally:
            stop.set()
            await asyncio.gather(*clients)

    failed = [r for r in log if not r.ok]
    names = {f"{name}@1", f"{name}@2"}
    wrong = [r for r in log if r.ok and r.adapter not in names]
    short = [r for r in log if r.ok and r.tokens != args.max_tokens]
    steady = [r.end - r.start for r in log if r.ok and r.start >= steady_start and r.end <= steady_end]
    during = [r.end - r.start for r in log if r.ok and any(overlaps(r, e.start, e.end) for e in events)]
    drain = [r.end - r.start for r in log
             if r.ok and any(overlaps(r, e.start, e.unloaded) for e in events)]
    per_kind = {k: [r.end - r.start for r in log
                    if r.ok and any(overlaps(r, e.start, e.end) for e in events if e.kind == k)]
                for k in ("swap", "rollback")}
    # completions per second in the window (requests wholly inside it undercount when latency ~ window)
    steady_done = sum(1 for r in log if r.ok and steady_start <= r.end <= steady_end)
    steady_tput = steady_done / (steady_end - steady_start)

    base = (percentile(steady, 50), percentile(steady, 99)) if steady else None
    print()
    print(f"== swap under load: {args.concurrency} clients x {args.max_tokens} tokens, rank {args.rank} "
          f"on {'+'.join(targets)}, {args.cycles} swaps + {args.cycles} rollbacks ==")
    print(f"  {'requests':<38} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}   {'p50/ss':>7} {'p99/ss':>7}")
    print(stats_row("steady state", steady, None))
    print(stats_row("overlapping a swap/rollback call", during, base))
    print(stats_row("  - swap calls only", per_kind["swap"], base))
    print(stats_row("  - rollback calls only", per_kind["rollback"], base))
    print(stats_row("overlapping call + drain + unload", drain, base))
    print(f"  steady-state throughput: {steady_tput:.2f} req/s, {steady_tput * args.max_tokens:.1f} tok/s")
    print()
    print(f"  {'event':<10} {'POST s':>7} {'server swap_seconds':>20} {'old unloaded after s':>21}")
    for e in events:
        print(f"  {e.kind:<10} {e.end - e.start:7.3f} {e.server_s:20.3f} {e.unloaded - e.start:21.3f}"
              f"   {e.old} -> {e.new}")
    calls = [e.end - e.start for e in events]
    server = [e.server_s for e in events]
    print(f"  swap call: median {statistics.median(calls):.3f} s, max {max(calls):.3f} s; server "
          f"swap_seconds: median {statistics.median(server):.3f} s, max {max(server):.3f} s")
    print(f"  direct /v1/load_lora_adapter (fresh name): idle median {statistics.median(idle_load) * 1000:.0f} ms "
          f"(min {min(idle_load) * 1000:.0f}, max {max(idle_load) * 1000:.0f}, n={len(idle_load)}); "
          f"under load median {statistics.median(loaded_busy) * 1000:.0f} ms "
          f"(min {min(loaded_busy) * 1000:.0f}, max {max(loaded_busy) * 1000:.0f})")
    print(f"  requests: {len(log)} total, failed: {len(failed)}, wrong adapter: {len(wrong)}, "
          f"not {args.max_tokens} tokens: {len(short)}")
    for r in failed[:5]:
        print(f"    failed: {r.error}")
    return 1 if failed or wrong else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-url", help="reuse this vLLM (started with --enable-lora and runtime "
                        "LoRA updating) instead of starting one")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL))
    parser.add_argument("--data-dir", help="default: a fresh temp dir")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--steady", type=float, default=20, help="seconds of steady-state load")
    parser.add_argument("--cycles", type=int, default=3, help="swap + rollback pairs")
    parser.add_argument("--gap", type=float, default=4, help="seconds between swap events")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", choices=sorted(TARGETS), default="qv")
    parser.add_argument("--max-loras", type=int, default=8)
    parser.add_argument("--max-lora-rank", type=int, default=16)
    parser.add_argument("--load-repeats", type=int, default=5, help="direct load_lora_adapter calls")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
