"""graft's ingestion throughput and dense search at scale, beside the plain libraries underneath.

    .venv/bin/python -m bench.ingest [--chunks 1200] [--upload json,multipart] [--rounds 4]
                                     [--vectors 100000] [--queries 1000] [--backend onnx]
                                     [--gateway subprocess|inprocess] [--skip-ingest] [--skip-search]

Text: Debian's git-doc pages (/usr/share/doc/git-doc, installed by .ci/run), written by nobody here.
The pages are shuffled with a fixed seed and split by name: the JSON arm gets `*.txt` pages, the
multipart arm the `*.html` pages of other commands, and the pages of neither give the queries of B.

A. Ingestion, end to end through the REST API: a gateway (`python -m service serve` in its own
   process by default; its engine URL points at a dead local port, so no vLLM starts) gets a new
   corpus per round, the round's pages POSTed as JSON `{documents}` (txt) or multipart `files`
   (html), and GET /v1/jobs/{id} is polled until the job succeeds. graft's time is POST sent ->
   job seen `succeeded`: upload, extraction, chunking, embedding, index generation, SQL commit.
   The plain arm is `SentenceTransformer.encode` of the very same chunks (the bench extracts and
   chunks each page with graft's own functions beforehand, and checks afterwards that graft stored
   exactly those chunks), same model (the packaged all-MiniLM-L6-v2), same batch size. Rounds
   alternate the arm that goes first (ABBA) to cancel drift on a shared machine. Tokens are the
   embedder tokenizer's count of each chunk, [CLS]/[SEP] included. The phases of graft's job come
   from the polled job object: extraction+chunking ends when `chunks_total` appears, embedding when
   `chunks_done` reaches it, and publishing (index, BM25, durable files, SQL) when it succeeds.

B. Dense search at scale with graft's own `VectorIndex`, configured from `Settings` as graft
   configures it (past `exact_search_max_vectors` it searches an HNSW graph). Embedding 100k chunks
   takes hours on 2 cores, so the index holds the real chunk embeddings of A (or of --real fresh
   chunks) and synthesized vectors: each a real embedding mixed with another one (weight up to
   0.5) plus Gaussian noise, normalised; the nearest-neighbour cosine of real vs synthesized is
   printed as a realism check. Queries are real: sentences of held-out pages, embedded. Latency is
   one `search_one(vector, k=10)` call at a time (after one call that builds the graph); recall@10
   is against exact search (faiss IndexFlatIP) over the same vectors.

C. --backend onnx | onnx-int8 (optional; needs onnxruntime and onnx, which graft does not depend
   on): the packaged model exported to ONNX here by torch (nothing is fetched), run by ONNX
   Runtime, `onnx-int8` with int8 weights (dynamic quantisation, per channel): throughput vs the
   fp32 `encode` of the same chunks, the cosine between the two embeddings of each chunk, and the
   recall@10 of retrieval with the backend's vectors (queries and chunks) against fp32 retrieval.
"""

import argparse
import asyncio
import contextlib
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faiss  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import (DEFAULT_BASE_MODEL, free_port, migrated_settings, percentile,  # noqa: E402
                          serve_subprocess)

GIT_DOC = Path("/usr/share/doc/git-doc")
GOAL_INGEST_RATIO = 0.9
GOAL_P50_MS = 2.0
GOAL_RECALL = 0.95
GOAL_BACKEND_RECALL = 0.99  # retrieval with the faster backend keeps 99 % of fp32's top 10
K = 10
SEED = 11
LINE = "=" * 86


# ---------------------------------------------------------------- text: git-doc pages


@dataclass
class Page:
    name: str
    kind: str  # "txt" (JSON arm) or "html" (multipart arm)
    data: bytes
    chunks: list[str] = field(default_factory=list)


def page_stems() -> list[str]:
    if not GIT_DOC.is_dir():
        sys.exit(f"{GIT_DOC} is missing: install Debian's git-doc package (apt-get install git-doc)")
    stems = sorted({p.stem for p in GIT_DOC.glob("*.txt")} | {p.stem for p in GIT_DOC.glob("*.html")})
    random.Random(SEED).shuffle(stems)
    return stems


def select_pages(stems: list[str], kind: str, target_chunks: int, max_page_chunks: int, embedder, settings,
                 used: set[str]) -> tuple[list[Page], float]:
    """Pages of `kind` (names not in `used`) until they make `target_chunks` chunks, extracted and
    chunked exactly as graft's ingestion worker does; also the seconds that took here. Pages of
    more than `max_page_chunks` chunks are passed over, so that rounds can be balanced."""
    from indexer.chunking import Chunker
    from indexer.extract import ExtractionError, extract

    chunker = Chunker(embedder.tokenizer, settings.default_chunk_size,
                      min(settings.default_chunk_overlap, settings.default_chunk_size // 4))
    pages, total, started = [], 0, time.perf_counter()
    for stem in stems:
        path = GIT_DOC / f"{stem}.{kind}"
        if total >= target_chunks:
            break
        if stem in used or not path.is_file():
            continue
        data = path.read_bytes()
        try:
            (doc,) = extract(kind, data, max_pdf_pages=settings.max_pdf_pages, timeout_s=settings.extract_timeout_s)
        except ExtractionError:
            continue
        chunks = [c.text for c in chunker.split(doc.text, kind) if c.text.strip()]
        if not chunks or len(chunks) > max_page_chunks:
            continue
        used.add(stem)
        pages.append(Page(path.name, kind, data, chunks))
        total += len(chunks)
    return pages, time.perf_counter() - started


def split_rounds(pages: list[Page], rounds: int) -> list[list[Page]]:
    """Consecutive groups of pages with about the same number of chunks each."""
    total = sum(len(p.chunks) for p in pages)
    groups, current, seen = [], [], 0
    for page in pages:
        current.append(page)
        seen += len(page.chunks)
        if seen >= total * (len(groups) + 1) / rounds and len(groups) < rounds - 1:
            groups.append(current)
            current = []
    groups.append(current)
    return [g for g in groups if g]


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def query_sentences(stems: list[str], used: set[str], n: int) -> list[str]:
    """Plain-prose sentences (6..30 words) of the .txt pages not ingested, as search queries."""
    out: list[str] = []
    for stem in stems:
        path = GIT_DOC / f"{stem}.txt"
        if stem in used or not path.is_file():
            continue
        for piece in _SENTENCE.split(path.read_text(errors="replace")):
            sentence = " ".join(piece.split())
            words = sentence.split()
            if 6 <= len(words) <= 30 and sentence[0].isalpha() and sum(w.isalpha() for w in words) >= 0.7 * len(words):
                out.append(sentence)
    random.Random(SEED).shuffle(out)
    return out[:n]


# ---------------------------------------------------------------- A. ingestion through the REST API


@contextlib.asynccontextmanager
async def gateway(kind: str, settings, log_path: Path):
    """An httpx client on a running gateway (subprocess or in this process)."""
    if kind == "inprocess":
        from service.app import create_app

        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://graft",
                                         timeout=600) as http:
                yield http
        return
    # /readyz needs an engine; /healthz answers once the lifespan has started
    async with serve_subprocess(settings, log_path, ready_path="/healthz") as url, \
            httpx.AsyncClient(base_url=url, timeout=600, trust_env=False) as http:
        yield http


@dataclass
class GraftRun:
    chunks: int
    seconds: float  # POST sent -> job seen succeeded
    phases: dict[str, float]


async def ingest_round(http: httpx.AsyncClient, corpus: str, pages: list[Page], poll_s: float) -> GraftRun:
    (await http.post("/v1/corpora", json={"name": corpus})).raise_for_status()
    expected = sum(len(p.chunks) for p in pages)
    t0 = time.perf_counter()
    if pages[0].kind == "txt":
        response = await http.post(f"/v1/corpora/{corpus}/documents", json={"documents": [
            {"id": p.name, "text": p.data.decode(errors="replace")} for p in pages]})
    else:
        response = await http.post(f"/v1/corpora/{corpus}/documents",
                                   files=[("files", (p.name, p.data, "text/html")) for p in pages])
    response.raise_for_status()
    marks = {"upload (POST -> 202)": time.perf_counter()}
    job_id = response.json()["job_id"]
    while True:
        job = (await http.get(f"/v1/jobs/{job_id}")).json()
        now = time.perf_counter()
        progress = job["progress"]
        if job["status"] != "queued":
            marks.setdefault("queued", now)
        if progress["chunks_total"]:
            marks.setdefault("extract + chunk", now)
            if progress["chunks_done"] >= progress["chunks_total"]:
                marks.setdefault("embed", now)
        if job["status"] in ("succeeded", "failed"):
            marks.setdefault("publish (index, BM25, fsync, SQL)", now)
            break
        if now - t0 > 3600:
            raise TimeoutError(f"job {job_id} did not finish: {job}")
        await asyncio.sleep(poll_s)
    if job["status"] != "succeeded" or job["errors"] or progress["chunks_total"] != expected:
        raise RuntimeError(f"ingestion of {corpus} did not go as planned ({expected} chunks expected): {job}")
    phases, previous = {}, t0
    for name, at in marks.items():
        phases[name] = max(at - previous, 0.0)
        previous = max(at, previous)
    return GraftRun(expected, previous - t0, phases)


def stored_chunks(settings, corpus: str) -> list[str]:
    """Chunk texts graft stored for a corpus (read from its SQL database)."""
    from sqlalchemy import select

    from adapters_store.db import make_engine, make_session_factory
    from adapters_store.models import Chunk, Corpus

    db = make_engine(settings.resolved_database_url)
    try:
        with make_session_factory(db)() as session:
            corpus_id = session.scalar(select(Corpus.id).where(Corpus.name == corpus))
            return list(session.scalars(select(Chunk.text).where(Chunk.corpus_id == corpus_id)))
    finally:
        db.dispose()


@dataclass
class IngestResult:
    kind: str
    pages: int = 0
    chunks: int = 0
    tokens: int = 0
    plain_s: float = 0.0
    graft_s: float = 0.0
    prep_s: float = 0.0  # extraction + chunking of the same pages in this process
    phases: dict[str, float] = field(default_factory=dict)
    identical: str = ""
    rounds: int = 0


async def bench_ingest(args, settings, model, embedder, plans: dict[str, list[Page]], prep: dict[str, float],
                       tmp: Path) -> tuple[list[IngestResult], list[str], np.ndarray]:
    """Both arms for each upload kind; returns the results and the plain arm's chunks + vectors."""
    batch = settings.embedding_batch_size
    results, all_texts, all_vectors = [], [], []

    def plain(texts: list[str]) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=batch, convert_to_numpy=True, normalize_embeddings=True,
                               show_progress_bar=False)
        return time.perf_counter() - started, vectors

    async with gateway(args.gateway, settings, tmp / "gateway.log") as http:
        for kind, pages in plans.items():  # warm both arms up on the smallest page of each kind
            warm = min(pages, key=lambda p: len(p.chunks))
            await ingest_round(http, f"warm-up-{kind}", [warm], args.poll)
            plain(warm.chunks[:batch])
        for kind, pages in plans.items():
            result = IngestResult(kind, prep_s=prep[kind])
            groups = split_rounds(pages, args.rounds)
            result.rounds = len(groups)
            for r, group in enumerate(groups):
                texts = [c for p in group for c in p.chunks]
                corpus = f"bench-{kind}-{r}"
                order = ("plain", "graft") if r % 2 == 0 else ("graft", "plain")
                for arm in order:
                    if arm == "plain":
                        seconds, vectors = await asyncio.to_thread(plain, texts)
                        result.plain_s += seconds
                        all_texts += texts
                        all_vectors.append(vectors)
                    else:
                        run = await ingest_round(http, corpus, group, args.poll)
                        result.graft_s += run.seconds
                        for name, value in run.phases.items():
                            result.phases[name] = result.phases.get(name, 0.0) + value
                    print(f"[bench] A {kind} round {r + 1}/{len(groups)} {arm}: {len(texts)} chunks",
                          file=sys.stderr)
                result.pages += len(group)
                result.chunks += len(texts)
                result.tokens += sum(len(ids) for ids in embedder.tokenizer(texts, add_special_tokens=True)["input_ids"])
            results.append(result)
    for result, (kind, pages) in zip(results, plans.items()):
        groups = split_rounds(pages, args.rounds)
        same = 0
        for r, group in enumerate(groups):
            mine = sorted(c for p in group for c in p.chunks)
            same += sum(a == b for a, b in zip(mine, sorted(stored_chunks(settings, f"bench-{kind}-{r}"))))
        result.identical = f"{same}/{result.chunks}"
    return results, all_texts, np.concatenate(all_vectors)


def report_ingest(results: list[IngestResult], args, settings, gateway_kind: str) -> None:
    print(LINE)
    print(f"A. ingestion through the REST API vs plain SentenceTransformer.encode  |  all-MiniLM-L6-v2 "
          f"(packaged), batch {settings.embedding_batch_size}, chunk {settings.default_chunk_size} tokens "
          f"(overlap {min(settings.default_chunk_overlap, settings.default_chunk_size // 4)})")
    print(f"gateway: {gateway_kind}, engine URL a dead local port (no vLLM)  |  torch threads "
          f"{_torch_threads()}  |  rounds per upload kind {args.rounds} (ABBA)")
    total = IngestResult("all")
    for r in results:
        label = {"txt": "JSON {documents} of git-doc .txt pages",
                 "html": "multipart `files` of git-doc .html pages"}[r.kind]
        print(LINE)
        print(f"{label}: {r.pages} pages, {r.chunks} chunks, {r.tokens} tokens "
              f"({r.tokens / r.chunks:.0f} per chunk); chunks stored by graft identical to the plain "
              f"arm's: {r.identical}")
        _ingest_table(r)
        phases = "  ".join(f"{name} {value:.1f}s" for name, value in r.phases.items())
        print(f"  graft phases (client-seen, summed over rounds): {phases}")
        print(f"  extraction + chunking of the same pages in the bench process: {r.prep_s:.1f}s "
              f"({r.prep_s / r.graft_s * 100:.1f}% of graft's time)")
        for name in ("pages", "chunks", "tokens", "plain_s", "graft_s"):
            setattr(total, name, getattr(total, name) + getattr(r, name))
    if len(results) > 1:
        print(LINE)
        print(f"all upload kinds together: {total.pages} pages, {total.chunks} chunks, {total.tokens} tokens")
        _ingest_table(total)


def _ingest_table(r: IngestResult) -> None:
    rows = [("chunks/s", r.chunks / r.plain_s, r.chunks / r.graft_s),
            ("tokens/s", r.tokens / r.plain_s, r.tokens / r.graft_s),
            ("wall time (s)", r.plain_s, r.graft_s)]
    print(f"  {'':22}{'plain encode':>14}{'graft':>12}{'graft/plain':>14}")
    for name, p, g in rows:
        print(f"  {name:22}{p:14.1f}{g:12.1f}{g / p:14.3f}")
    ratio = rows[0][2] / rows[0][1]
    print(f"  goal: throughput ratio {ratio:.3f} >= {GOAL_INGEST_RATIO}: "
          f"{'PASS' if ratio >= GOAL_INGEST_RATIO else 'FAIL'}")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


# ---------------------------------------------------------------- B. dense search at scale


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


# ---------------------------------------------------------------- C. a faster embedding backend


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


# ---------------------------------------------------------------- main


async def main(args) -> int:
    from sentence_transformers import SentenceTransformer

    from indexer.embedding import Embedder, resolve_model_dir

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graft-bench-ingest-") as tmp:
        tmp = Path(tmp)
        settings = migrated_settings(tmp / "data", Path(args.base_model),
                                     engine_urls=[f"http://127.0.0.1:{free_port()}"], port=free_port())
        embedder = Embedder.load(settings.embedding_model)
        model = SentenceTransformer(str(resolve_model_dir(settings.embedding_model)), device="cpu",
                                    local_files_only=True)
        stems, used = page_stems(), set()
        kinds = [{"json": "txt", "multipart": "html"}[u.strip()] for u in args.upload.split(",") if u.strip()]
        plans, prep = {}, {}
        target = args.chunks if not args.skip_ingest else args.real
        for kind in kinds:
            share = target // len(kinds)
            plans[kind], prep[kind] = select_pages(stems, kind, share, max(20, share // (2 * args.rounds)),
                                                   embedder, settings, used)
        queries = query_sentences(stems, used, args.queries)
        print(f"[bench] pages chosen and chunked after {time.perf_counter() - started:.0f}s", file=sys.stderr)

        texts: list[str] = []
        vectors = np.zeros((0, embedder.dimension), dtype=np.float32)
        if not args.skip_ingest:
            results, texts, vectors = await bench_ingest(args, settings, model, embedder, plans, prep, tmp)
            report_ingest(results, args, settings, args.gateway)
            print(f"[bench] A done after {time.perf_counter() - started:.0f}s", file=sys.stderr)
        query_vectors = model.encode(queries, batch_size=settings.embedding_batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        if not args.skip_search:
            note = "the plain arm of A"
            real_texts, real = texts, vectors
            if not len(real):
                real_texts = [c for pages in plans.values() for p in pages for c in p.chunks][: args.real]
                real = model.encode(real_texts, batch_size=settings.embedding_batch_size, convert_to_numpy=True,
                                    normalize_embeddings=True, show_progress_bar=False)
                note = "embedded here"
            _, unique = np.unique(np.asarray(real_texts, dtype=object), return_index=True)
            real = np.ascontiguousarray(real[np.sort(unique)], dtype=np.float32)
            bench_search(args, settings, real, note, query_vectors)
            print(f"[bench] B done after {time.perf_counter() - started:.0f}s", file=sys.stderr)
        if args.backend:
            if not texts:
                texts = [c for pages in plans.values() for p in pages for c in p.chunks]
                vectors = model.encode(texts, batch_size=settings.embedding_batch_size, convert_to_numpy=True,
                                       normalize_embeddings=True, show_progress_bar=False)
            bench_backend(args, settings, model, texts, vectors, queries, query_vectors, tmp)
            print(f"[bench] C done after {time.perf_counter() - started:.0f}s", file=sys.stderr)
    print(LINE)
    print(f"total bench time {time.perf_counter() - started:.0f}s")
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1200,
                        help="chunks to ingest in A, split between the upload kinds (default 1200)")
    parser.add_argument("--upload", default="json,multipart",
                        help="upload kinds for A: json (txt pages), multipart (html pages); default both")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per upload kind, alternating which arm goes first (default 4)")
    parser.add_argument("--gateway", choices=("subprocess", "inprocess"), default="subprocess",
                        help="run the gateway as `python -m service serve` or in this process")
    parser.add_argument("--poll", type=float, default=0.2, help="job polling interval in seconds (default 0.2)")
    parser.add_argument("--vectors", type=int, default=100_000, help="vectors in the index of B (default 100000)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for B and C (default 1000)")
    parser.add_argument("--real", type=int, default=1000,
                        help="real chunks to embed for B when A is skipped (default 1000)")
    parser.add_argument("--sigma", type=float, default=0.03, help="noise per dimension of synthesized vectors")
    parser.add_argument("--mix", type=float, default=0.5, help="largest weight of the second real vector")
    parser.add_argument("--hnsw-m", type=int, default=None, help="override graft's HNSW M")
    parser.add_argument("--ef-construction", type=int, default=None, help="override graft's efConstruction")
    parser.add_argument("--ef-search", type=int, default=None, help="override graft's efSearch")
    parser.add_argument("--backend", default=None, choices=("onnx", "onnx-int8"),
                        help="also measure this embedding backend against fp32 (C); needs onnxruntime + onnx")
    parser.add_argument("--backend-chunks", type=int, default=600,
                        help="chunks encoded by each arm of C's throughput comparison (default 600)")
    parser.add_argument("--skip-ingest", action="store_true", help="skip A")
    parser.add_argument("--skip-search", action="store_true", help="skip B")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL),
                        help="prepared HF model folder (the gateway loads its tokenizer at start-up)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
