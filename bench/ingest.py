"""graft's ingestion throughput and dense search at scale, beside the plain libraries underneath.

    .venv/bin/python -m bench.ingest [--chunks 1200] [--upload json,multipart] [--rounds 4]
                                     [--vectors 100000] [--queries 1000] [--backend onnx]
                                     [--gateway subprocess|inprocess] [--graft-backend onnx|torch]
                                     [--skip-ingest] [--skip-search]

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

C. --backend onnx | onnx-int8 (optional): `onnx` is graft's default embedding backend (the packaged
   model exported by torch, nothing fetched, run by ONNX Runtime); `onnx-int8` that export with
   int8 weights (dynamic quantisation, per channel), which graft does not offer. Batch throughput
   vs the fp32 `encode` of the same chunks, one-query latency on one thread, the cosine between
   the two embeddings of each chunk, and the recall@10 of retrieval with the backend's vectors
   (queries and chunks) against fp32 retrieval.
"""

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import (DEFAULT_BASE_MODEL, free_port, migrated_settings,  # noqa: E402
                          serve_subprocess)
from bench.embed_backends import bench_backend  # noqa: E402
from bench.git_doc_text import Page, page_stems, query_sentences, select_pages, split_rounds  # noqa: E402
from bench.search_scale import LINE, bench_search  # noqa: E402

GOAL_INGEST_RATIO = 0.9
FINAL_POLL_S = 0.02


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
        # Each poll costs the gateway CPU that the job needs: poll slowly while it embeds, then
        # fast, so that the end is seen within ~20 ms.
        embedded = progress["chunks_total"] and progress["chunks_done"] >= progress["chunks_total"]
        await asyncio.sleep(FINAL_POLL_S if embedded else poll_s)
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
    print(f"gateway: {gateway_kind}, embedding backend {settings.embedding_backend}, engine URL a dead "
          f"local port (no vLLM)  |  torch threads "
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


# ---------------------------------------------------------------- main


async def main(args) -> int:
    from sentence_transformers import SentenceTransformer

    from indexer.embedding import Embedder, resolve_model_dir

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graft-bench-ingest-") as tmp:
        tmp = Path(tmp)
        settings = migrated_settings(tmp / "data", Path(args.base_model),
                                     engine_urls=[f"http://127.0.0.1:{free_port()}"], port=free_port(),
                                     embedding_backend=args.graft_backend)
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
    parser.add_argument("--graft-backend", choices=("onnx", "torch"), default="onnx",
                        help="graft's embedding backend (GRAFT_EMBEDDING_BACKEND; default onnx, graft's "
                             "default); the plain arm is always SentenceTransformer.encode")
    parser.add_argument("--poll", type=float, default=0.25,
                        help="job polling interval until the chunks are embedded (default 0.25; "
                             f"then {FINAL_POLL_S})")
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
                        help="also measure this embedding backend against fp32 torch (C)")
    parser.add_argument("--backend-chunks", type=int, default=600,
                        help="chunks encoded by each arm of C's throughput comparison (default 600)")
    parser.add_argument("--skip-ingest", action="store_true", help="skip A")
    parser.add_argument("--skip-search", action="store_true", help="skip B")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL),
                        help="prepared HF model folder (the gateway loads its tokenizer at start-up)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
