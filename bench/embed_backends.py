"""Part C of bench/ingest.py: embedding backends against fp32 SentenceTransformer.encode: batch
throughput, one-query latency (on one thread, as graft embeds queries) and retrieval quality.
`onnx` is graft's own backend (indexer/onnx_backend.py); `onnx-int8` is that export dynamically
quantised here (int8 weights, per channel), which graft does not offer.
"""

import time
from pathlib import Path

import faiss
import numpy as np

from bench.search_scale import K, LINE, recall_at_k

GOAL_BACKEND_RECALL = 0.99  # retrieval with the faster backend keeps 99 % of fp32's top 10
QUERY_REPEATS = 200


def onnx_encoder(model, model_dir: Path, backend: str, folder: Path):
    """encode(texts, batch_size, single_thread=False) of the backend."""
    import torch

    from indexer.onnx_backend import OnnxEncoder, export, input_names

    if backend == "onnx":
        return OnnxEncoder.load(model, model_dir, folder).encode
    from onnxruntime.quantization import QuantType, quantize_dynamic

    export(model, folder / "model.onnx", input_names(model))
    quantize_dynamic(str(folder / "model.onnx"), str(folder / "model-int8.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True)
    return OnnxEncoder(model, folder / "model-int8.onnx", torch.get_num_threads()).encode


def query_latency_ms(encode, queries: list[str]) -> float:
    """p50 of one query at a time."""
    times = []
    for query in (queries * (QUERY_REPEATS // max(len(queries), 1) + 1))[:QUERY_REPEATS]:
        started = time.perf_counter()
        encode(query)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def bench_backend(args, settings, model, texts: list[str], fp32: np.ndarray, queries: list[str],
                  query_fp32: np.ndarray, tmp: Path) -> None:
    from indexer.embedding import Embedder, resolve_model_dir

    batch = settings.embedding_batch_size
    started = time.perf_counter()
    fast = onnx_encoder(model, resolve_model_dir(settings.embedding_model), args.backend, tmp)
    prepare_s = time.perf_counter() - started
    fast(texts[:batch], batch)
    sample = texts[: args.backend_chunks]
    times = {"fp32": 0.0, args.backend: 0.0}
    vectors: dict[str, list[np.ndarray]] = {}
    halves = [sample[: len(sample) // 2], sample[len(sample) // 2:]]
    for i, part in enumerate(halves):  # ABBA
        order = ("fp32", args.backend) if i % 2 == 0 else (args.backend, "fp32")
        for arm in order:
            started = time.perf_counter()
            if arm == "fp32":
                out = model.encode(part, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True,
                                   show_progress_bar=False)
            else:
                out = fast(part, batch)
            times[arm] += time.perf_counter() - started
            vectors.setdefault(arm, []).append(out)
    a, b = np.concatenate(vectors["fp32"]), np.concatenate(vectors[args.backend])
    cosine = np.sum(a * b, axis=1)
    # Retrieval over all the chunks of A: fp32 everywhere vs the backend everywhere.
    fast_all, fast_queries = fast(texts, batch), fast(queries, batch)
    reference = faiss.IndexFlatIP(fp32.shape[1])
    reference.add(fp32)
    _, truth = reference.search(query_fp32, K)
    candidate = faiss.IndexFlatIP(fp32.shape[1])
    candidate.add(fast_all)
    _, found = candidate.search(fast_queries, K)
    recall = recall_at_k(list(found), truth)
    top1 = float(np.mean(found[:, 0] == truth[:, 0]))
    torch_query = query_latency_ms(lambda q: Embedder(settings.embedding_model, model).encode([q]), queries)
    fast_query = query_latency_ms(lambda q: fast([q], batch, True), queries)
    n, ratio = len(sample), times["fp32"] / times[args.backend]
    print(LINE)
    print(f"C. embedding backend {args.backend!r} (ONNX Runtime, exported here from the packaged model in "
          f"{prepare_s:.0f}s) vs fp32 SentenceTransformer.encode: {n} chunks, batch {batch}, ABBA halves")
    print(f"  {'':22}{'fp32 torch':>12}{args.backend:>14}{'ratio':>10}")
    print(f"  {'chunks/s':22}{n / times['fp32']:12.1f}{n / times[args.backend]:14.1f}{ratio:10.3f}")
    print(f"  {'one query p50 (ms)':22}{torch_query:12.2f}{fast_query:14.2f}{torch_query / fast_query:10.3f}"
          f"   (one thread, {QUERY_REPEATS} held-out queries one at a time)")
    print(f"  cosine(fp32, {args.backend}) per chunk: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    print(f"  retrieval over {len(texts)} chunks with {len(queries)} queries: recall@10 of "
          f"{args.backend} (queries and chunks) vs fp32 {recall:.4f}, same top-1 {top1 * 100:.1f}%")
    ok = recall >= GOAL_BACKEND_RECALL and ratio > 1
    print(f"  goal: faster (ratio {ratio:.3f} > 1) with recall@10 {recall:.4f} >= {GOAL_BACKEND_RECALL}: "
          f"{'PASS' if ok else 'FAIL'}")
