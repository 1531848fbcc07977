"""Part B of bench/ingest.py: dense search at scale with graft's VectorIndex against exact search.

Real chunk embeddings plus synthesized ones (real mixed with real, plus noise, normalised) reach
the target size; single-query latency p50/p99 and recall@10 against faiss IndexFlatIP.
"""

import sys
import time

import faiss
import numpy as np

from bench.common import percentile

GOAL_P50_MS = 2.0
GOAL_RECALL = 0.95
K = 10
SEED = 11  # the synthesized vectors
LINE = "=" * 86


def synthesize(real: np.ndarray, n: int, rng: np.random.Generator, sigma: float, mix: float) -> np.ndarray:
    """n vectors near real ones: (1-w)*a + w*b + N(0, sigma^2) per dimension, w ~ U(0, mix), normalised."""
    a, b = rng.integers(0, len(real), n), rng.integers(0, len(real), n)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 20_000):
        end = min(start + 20_000, n)
        w = rng.uniform(0, mix, (end - start, 1)).astype(np.float32)
        v = (1 - w) * real[a[start:end]] + w * real[b[start:end]]
        v += rng.normal(0, sigma, v.shape).astype(np.float32)
        out[start:end] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def nn_cosine(sample: np.ndarray, base: np.ndarray) -> float:
    """Mean cosine of each sample vector's nearest neighbour in base (itself excluded)."""
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    scores, _ = flat.search(sample, 2)
    return float(scores[:, 1].mean())


def timed_searches(search, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
    latencies, results = [], []
    for q in queries:
        started = time.perf_counter()
        ids = search(q)
        latencies.append((time.perf_counter() - started) * 1000)
        results.append(ids)
    return latencies, results


def recall_at_k(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(t[:K].tolist())) / K for f, t in zip(found, truth)]))


def bench_search(args, settings, real: np.ndarray, real_note: str, queries: np.ndarray) -> None:
    from indexer.vector_index import VectorIndex

    rng = np.random.default_rng(SEED)
    n = max(args.vectors, len(real))
    synthetic = synthesize(real, n - len(real), rng, args.sigma, args.mix)
    vectors = np.concatenate([real, synthetic])
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)  # like graft's hashed chunk ids
    sample = rng.choice(len(real), min(500, len(real)), replace=False)
    realism = (nn_cosine(real[sample], real), nn_cosine(synthetic[:500], vectors) if len(synthetic) else float("nan"))

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth_rows = exact.search(queries, K)
    truth = ids[truth_rows]

    params = vector_params(settings, args)
    index = VectorIndex.empty(vectors.shape[1], exact_max=settings.exact_search_max_vectors, **params)
    started = time.perf_counter()
    index.add(ids, vectors)
    add_s = time.perf_counter() - started
    started = time.perf_counter()
    index.search_one(queries[0], K)  # builds the graph once (graft does it when writing a generation)
    build_s = time.perf_counter() - started
    print(f"[bench] B index of {n} vectors: add {add_s:.1f}s, first search (graph build) {build_s:.1f}s",
          file=sys.stderr)

    def graft_search(q):
        return np.array([i for i, _ in index.search_one(q, K)], dtype=np.int64)

    def exact_search(q):
        return ids[exact.search(q.reshape(1, -1), K)[1][0]]

    default_threads = faiss.omp_get_max_threads()
    graft_lat, graft_found = timed_searches(graft_search, queries)
    # Exact single queries on one OpenMP thread and on faiss's default (what graft did before it
    # pinned single queries to one thread); this thread only: an OpenMP thread count is per thread.
    n_exact = min(len(queries), 300)
    faiss.omp_set_num_threads(1)
    exact_lat, _ = timed_searches(exact_search, queries[:n_exact])
    faiss.omp_set_num_threads(default_threads)
    exact_default_lat, _ = timed_searches(exact_search, queries[:n_exact])
    # graft below exact_search_max_vectors (most corpora): its flat index, single queries.
    n_flat = min(n, settings.exact_search_max_vectors)
    flat = VectorIndex.empty(vectors.shape[1], exact_max=settings.exact_search_max_vectors, **params)
    flat.add(ids[:n_flat], vectors[:n_flat])
    flat_lat, _ = timed_searches(lambda q: flat.search_one(q, K), queries[:n_exact])
    sweep = {}
    configured_ef = index.ef_search
    for ef in sorted({16, 32, 64, 96, 128, 192, 256, 384, configured_ef}):
        index.ef_search = ef
        lat, found = timed_searches(graft_search, queries)
        sweep[ef] = (percentile(lat, 50), percentile(lat, 99), recall_at_k(found, truth))
    index.ef_search = configured_ef

    recall = recall_at_k(graft_found, truth)
    p50, p99 = percentile(graft_lat, 50), percentile(graft_lat, 99)
    e50, e99 = percentile(exact_lat, 50), percentile(exact_lat, 99)
    print(LINE)
    print(f"B. dense search at scale: {n} vectors x {vectors.shape[1]} dims, {len(queries)} held-out "
          f"queries (real: git-doc sentences, embedded), k={K}, one query at a time")
    print(f"vectors: {len(real)} real chunk embeddings ({real_note}) + {len(synthetic)} synthesized "
          f"(real mixed with real, w ~ U(0,{args.mix}), noise sigma {args.sigma}/dim, normalised)")
    print(f"realism: mean nearest-neighbour cosine, real among real {realism[0]:.3f}, synthesized among "
          f"all {realism[1]:.3f}; exact top-10 hits that are real vectors: "
          f"{np.isin(truth, ids[:len(real)]).mean() * 100:.1f}% (real share of the index "
          f"{len(real) / n * 100:.1f}%)")
    kind = index.kind
    print(f"graft VectorIndex: kind {kind} (exact_search_max_vectors {settings.exact_search_max_vectors}), "
          f"{_params_text(index)}; add {add_s:.1f}s, graph build {build_s:.1f}s (faiss omp threads "
          f"{default_threads})")
    print(f"  {'':22}{'exact (FlatIP)':>16}{'graft ' + kind:>14}{'graft/exact':>14}")
    print(f"  {'p50 latency (ms)':22}{e50:16.3f}{p50:14.3f}{p50 / e50:14.3f}")
    print(f"  {'p99 latency (ms)':22}{e99:16.3f}{p99:14.3f}{p99 / e99:14.3f}")
    print(f"  {'recall@10':22}{1.0:16.3f}{recall:14.3f}{recall:14.3f}")
    ok = p50 <= GOAL_P50_MS and recall >= GOAL_RECALL
    print(f"  goal: p50 {p50:.3f} ms <= {GOAL_P50_MS} ms at recall@10 {recall:.3f} >= {GOAL_RECALL}: "
          f"{'PASS' if ok else 'FAIL'}")
    print("  efSearch sweep on the same graph (graft's search_one):")
    print(f"    {'efSearch':>10}{'p50 ms':>10}{'p99 ms':>10}{'recall@10':>12}")
    for ef, (s50, s99, rec) in sweep.items():
        mark = "  <- configured" if ef == configured_ef else ""
        print(f"    {ef:10d}{s50:10.3f}{s99:10.3f}{rec:12.3f}{mark}")
    print(f"  faiss OpenMP threads for one exact query over {n} vectors: {default_threads} (faiss default) "
          f"p50 {percentile(exact_default_lat, 50):.3f} / p99 {percentile(exact_default_lat, 99):.3f} ms, "
          f"1 p50 {e50:.3f} / p99 {e99:.3f} ms (graft searches single queries on 1)")
    print(f"  graft flat index at {n_flat} vectors (exact, kind {'flat' if n_flat <= settings.exact_search_max_vectors else 'hnsw'}): "
          f"p50 {percentile(flat_lat, 50):.3f} / p99 {percentile(flat_lat, 99):.3f} ms")


def vector_params(settings, args) -> dict:
    """The HNSW parameters graft would use (Settings), overridden by --hnsw-m/--ef-*."""
    params = {}
    for name, setting, flag in (("hnsw_m", "hnsw_m", args.hnsw_m),
                                ("ef_construction", "hnsw_ef_construction", args.ef_construction),
                                ("ef_search", "hnsw_ef_search", args.ef_search)):
        value = flag if flag is not None else getattr(settings, setting, None)
        if value is not None:
            params[name] = value
    return params


def _params_text(index) -> str:
    parts = [f"M={index.hnsw_m}"]
    if hasattr(index, "ef_construction"):
        parts.append(f"efConstruction={index.ef_construction}")
    parts.append(f"efSearch={index.ef_search}")
    return " ".join(parts)
