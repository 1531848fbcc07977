"""The MCP `search` tool vs REST search: what /mcp's protocol layer adds to a search.

    .venv/bin/python -m bench.mcp [--rounds 9] [--per-round 25]

graft runs as `python -m service serve` in its own process (no engine: search needs none) with
corpus `lore` of bench/lore.py's 36 made-up documents and domain `lore` over it. The same questions
(72, distinct) are searched, k=4 hybrid, one at a time (c=1), through:
- REST: `POST /v1/corpora/lore/search` with httpx (one kept-alive connection);
- MCP: a `search` tool call `{domain: lore, query, k: 4, mode: hybrid}` through the official `mcp`
  SDK's client on one open session (streamable HTTP, kept-alive connection);
- MCP raw: the same tool call as one JSON-RPC POST with httpx on a session opened by hand (the
  server's share of MCP's cost without the SDK client's).
All answer the same hits (checked for every question). The arms rotate order each round (REST
first, then MCP first, ...) in rounds of --per-round requests each, to cancel drift on a shared
machine; a warm-up of each arm is not timed. Latency is the client's wall time per call; the
ratio is MCP p50 / REST p50.

Goal (issue 30): ratio <= 1.2.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from bench.common import DEFAULT_BASE_MODEL, free_port, migrated_settings, percentile, serve_subprocess, wait_job  # noqa: E402,E501
from bench.lore import corpus_and_questions  # noqa: E402

GOAL_RATIO = 1.2
K = 4


async def main(rounds: int, per_round: int) -> None:
    docs, questions = corpus_and_questions(36)
    with tempfile.TemporaryDirectory(prefix="graft-bench-mcp-") as tmp:
        # No engine: an unreachable URL (search never calls one; completions would answer 503).
        settings = migrated_settings(Path(tmp), DEFAULT_BASE_MODEL, engine_urls=[f"http://127.0.0.1:{free_port()}"],
                                     port=free_port())
        async with serve_subprocess(settings, Path(tmp) / "gateway.log", ready_path="/healthz") as url, \
                httpx.AsyncClient(base_url=url, timeout=120) as rest, \
                httpx2.AsyncClient(timeout=120) as transport, \
                Client(streamable_http_client(f"{url}/mcp", http_client=transport)) as mcp:
            await rest.post("/v1/corpora", json={"name": "lore"})
            job = await wait_job(rest, (await rest.post("/v1/corpora/lore/documents",
                                                        json={"documents": docs})).json()["job_id"])
            assert job["status"] == "succeeded", job
            assert (await rest.put("/v1/domains/lore", json={"corpora": ["lore"]})).status_code == 201

            async def by_rest(query: str) -> list:
                answer = await rest.post("/v1/corpora/lore/search", json={"query": query, "k": K, "mode": "hybrid"})
                answer.raise_for_status()
                return [(h["document_id"], h["chunk_id"]) for h in answer.json()["hits"]]

            async def by_mcp(query: str) -> list:
                result = await mcp.call_tool("search", {"domain": "lore", "query": query, "k": K, "mode": "hybrid"})
                assert not result.is_error, result
                return [(h["document_id"], h["chunk_id"]) for h in result.structured_content["hits"]]

            rpc = {"Accept": "application/json, text/event-stream", "Mcp-Protocol-Version": "2025-06-18"}
            opened = await rest.post("/mcp", headers=rpc, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
            rpc["Mcp-Session-Id"] = opened.headers["mcp-session-id"]
            await rest.post("/mcp", headers=rpc, json={"jsonrpc": "2.0", "method": "notifications/initialized"})

            async def by_raw_mcp(query: str) -> list:
                answer = await rest.post("/mcp", headers=rpc, json={
                    "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {
                        "domain": "lore", "query": query, "k": K, "mode": "hybrid"}}})
                answer.raise_for_status()
                return [(h["document_id"], h["chunk_id"]) for h in answer.json()["result"]["structuredContent"]["hits"]]

            arms = {"REST": by_rest, "MCP": by_mcp, "MCP raw": by_raw_mcp}
            for query in questions:  # warm-up, and the same hits every way
                assert await by_rest(query) == await by_mcp(query) == await by_raw_mcp(query), query
            times = {name: [] for name in arms}
            n = 0
            names = list(arms)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]  # each arm first in turn
                for name in order:
                    for i in range(per_round):
                        query = questions[(n + i) % len(questions)]
                        started = time.perf_counter()
                        await arms[name](query)
                        times[name].append(time.perf_counter() - started)
                n += per_round
    p50 = {name: percentile(values, 50) for name, values in times.items()}
    p95 = {name: percentile(values, 95) for name, values in times.items()}
    ratio = p50["MCP"] / p50["REST"]
    print(f"search, k={K} hybrid, c=1, {len(times['REST'])} calls per arm ({rounds} rounds of {per_round})")
    print(f"{'arm':<8} {'p50 ms':>8} {'p95 ms':>8}")
    for name in arms:
        print(f"{name:<8} {p50[name] * 1000:8.2f} {p95[name] * 1000:8.2f}")
    print(f"MCP / REST p50: {ratio:.2f}  (goal <= {GOAL_RATIO}: {'PASS' if ratio <= GOAL_RATIO else 'FAIL'})")
    print(f"MCP raw / REST p50: {p50['MCP raw'] / p50['REST']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=25)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.per_round))
