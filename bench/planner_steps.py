"""Where the planner's time goes: each step of a domain request's plan, timed serially in process."""

import json
import statistics
import time

from bench.common import percentile


async def planner_breakdown(state, bodies: list[dict], domain: str, k: int) -> dict[str, list[float]]:
    """Time each step the planner takes for each chat body (one user message, of a domain of one
    corpus searched in hybrid mode with `k`), serially, in milliseconds."""
    from indexer.hybrid import reciprocal_rank_fusion
    from indexer.search import hybrid_candidates
    from service.rag.prompt import Passage

    planner, retriever = state.planner, state.retriever
    steps: dict[str, list[float]] = {}

    def note(name: str, started: float) -> float:
        now = time.perf_counter()
        steps.setdefault(name, []).append((now - started) * 1000)
        return now

    for body in bodies * 2:  # the first pass warms caches; keep the second
        question = body["messages"][-1]["content"]
        t = t0 = time.perf_counter()
        route = planner.routing.get(domain)
        corpora = retriever._lookup(list(route.corpora))
        t = note("corpus lookup (SQL)", t)
        searcher = retriever.registry.entry_for(corpora[0]).searcher
        vector = searcher.embedder.encode([question])[0]
        t = note("query embedding", t)
        dense = searcher.search_vector(vector, hybrid_candidates(k))
        t = note("FAISS search", t)
        lexical = searcher.lexical.search(question, hybrid_candidates(k))
        t = note("BM25 search", t)
        fused = reciprocal_rank_fusion([dense, lexical], k)
        t = note("RRF fusion", t)
        hits = retriever._hydrate(fused, {cid: corpora[0].name for cid, _ in fused})
        t = note("hydration (SQL)", t)
        passages = [Passage(h.corpus, h.document_id, h.chunk_id, h.score, h.text, h.metadata)
                    for h in hits]
        planner.prompts.build_chat(body["messages"], passages, route.system_prompt, body.get("max_tokens"))
        t = note("prompt build (tokenize)", t)
        steps.setdefault("sum of steps", []).append((t - t0) * 1000)
        t = time.perf_counter()
        plan = await planner.plan("chat", body, gateway_idle=True)  # as an idle gateway plans
        t = note("planner.plan() end to end", t)
        json.dumps(plan.payload)
        note("payload JSON encode", t)
    half = len(bodies)
    return {name: values[half:] for name, values in steps.items()}


def print_breakdown(breakdown: dict[str, list[float]]) -> None:
    print("planner steps, in-process, serial (ms per question)")
    print(f"  {'step':30}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name, values in breakdown.items():
        print(f"  {name:30}{percentile(values, 50):9.2f}{percentile(values, 99):9.2f}"
              f"{statistics.mean(values):9.2f}")
