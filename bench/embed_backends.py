"""Part C of bench/ingest.py: a faster embedding backend (ONNX Runtime, fp32 or int8) exported
here from the packaged model, against fp32 SentenceTransformer.encode: speed and retrieval quality.
Needs onnxruntime and onnx, which graft itself does not depend on.
"""

import sys
import time
from pathlib import Path

import faiss
import numpy as np

from bench.search_scale import K, LINE, recall_at_k

GOAL_BACKEND_RECALL = 0.99  # retrieval with the faster backend keeps 99 % of fp32's top 10


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def onnx_encoder(model, backend: str, folder: Path):
    """encode(texts, batch_size) with ONNX Runtime: the packaged model exported here by torch
    (nothing fetched), `onnx-int8` dynamically quantised (int8 weights, per channel). Mean pooling
    and normalisation as the model's sentence-transformers pipeline does them."""
    try:
        import onnxruntime as ort
    except ImportError:
        sys.exit("--backend onnx needs onnxruntime and onnx, which graft does not depend on: "
                 ".venv/bin/pip install onnxruntime==1.30.0 onnx==1.23.1 (or put them on PYTHONPATH)")
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    tokenizer, names = model.tokenizer, ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["an example", "a slightly longer example sentence"], padding=True, return_tensors="pt")
    path = folder / "model.onnx"
    torch.onnx.export(LastHidden(model[0].auto_model.eval()), tuple(sample[n] for n in names), str(path),
                      input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
    if backend == "onnx-int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(path), str(folder / "model-int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
        path = folder / "model-int8.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = _torch_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts], kind="stable")  # as sentence-transformers does
        out = np.empty((len(texts), model.get_embedding_dimension()), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                              max_length=model.max_seq_length, return_tensors="np")
            hidden = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return encode


def bench_backend(args, settings, model, texts: list[str], fp32: np.ndarray, queries: list[str],
                  query_fp32: np.ndarray, tmp: Path) -> None:
    batch = settings.embedding_batch_size
    started = time.perf_counter()
    fast = onnx_encoder(model, args.backend, tmp)
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
    n, ratio = len(sample), times["fp32"] / times[args.backend]
    print(LINE)
    print(f"C. embedding backend {args.backend!r} (ONNX Runtime, exported here from the packaged model in "
          f"{prepare_s:.0f}s) vs fp32 SentenceTransformer.encode: {n} chunks, batch {batch}, ABBA halves")
    print(f"  {'':22}{'fp32 torch':>12}{args.backend:>14}{'ratio':>10}")
    print(f"  {'chunks/s':22}{n / times['fp32']:12.1f}{n / times[args.backend]:14.1f}{ratio:10.3f}")
    print(f"  cosine(fp32, {args.backend}) per chunk: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    print(f"  retrieval over {len(texts)} chunks with {len(queries)} queries: recall@10 of "
          f"{args.backend} (queries and chunks) vs fp32 {recall:.4f}, same top-1 {top1 * 100:.1f}%")
    ok = recall >= GOAL_BACKEND_RECALL and ratio > 1
    print(f"  goal: faster (ratio {ratio:.3f} > 1) with recall@10 {recall:.4f} >= {GOAL_BACKEND_RECALL}: "
          f"{'PASS' if ok else 'FAIL'}")
