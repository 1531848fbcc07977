"""Filtered search at scale: graft's CorpusSearcher over 100k chunks with a metadata filter that keeps
1 % of them (and 5 %, 10 %, 50 %), beside the same search unfiltered, an exact filtered search, and
the post-filter it replaces (top k, then drop what the filter refuses).

    .venv/bin/python -m bench.search_filter [--vectors 100000] [--real 1000] [--queries 300]
                                            [--shares 0.01,0.05,0.1,0.5] [--skip-planning]

Vectors as in bench/ingest.py part B (bench/search_scale.py's synthesis): real chunk embeddings of
Debian's git-doc pages plus synthesized ones (a real embedding mixed with another, plus noise,
normalised) up to --vectors, in graft's VectorIndex configured from Settings (HNSW past
GRAFT_EXACT_SEARCH_MAX_VECTORS). Each chunk's BM25 text is a real chunk's text. Chunks are grouped
ten to a document; document i has metadata {"group": "g<i mod 100>"}, so a filter naming j groups
keeps j % of the chunks. Queries are real held-out sentences, embedded once beforehand (the
embedding is the same with and without a filter, so it is left out of the search timings).

Each query is searched unfiltered and filtered in alternating order (ABBA) to cancel drift on a
shared machine; latencies are of `CorpusSearcher.search` with the query vector given, a filter
whose chunk subset is already resolved (the first use of a filter in a generation resolves it once:
printed apart). recall@10 is against an exact filtered search: numpy over the allowed vectors
(dense), the full BM25 ranking restricted to the allowed chunks (bm25), and RRF of those two
(hybrid). "post-filter" is what filtering after the search would return: the unfiltered top 10
less the refused chunks, so fewer than 10.

Completion planning (unless --skip-planning): `Planner.plan` of a chat request on a domain over
the same corpus (SQLite store holding the 100k chunk rows, hybrid k=4), with a key's filter
keeping 1 % vs without: query embedding, search, SQL hydration and prompt building, end to end.

Goal (issue 17): with the filter keeping 1 %, the filtered search's p50 within 2x of the unfiltered
search's, and recall@10 >= 0.95 against the exact filtered search.
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

import numpy as np  # noqa: E402

from bench.common import DEFAULT_BASE_MODEL, free_port, migrated_settings, percentile  # noqa: E402
from bench.search_scale import LINE, SEED, synthesize  # noqa: E402

K = 10
DOC_CHUNKS = 10
GROUPS = 100
GOAL_RATIO = 2.0
GOAL_RECALL = 0.95


def group_filter(share: float):
    from indexer.filters import parse

    n = max(1, round(share * GROUPS))
    return parse({"group": [f"g{i}" for i in range(n)]})


def build_corpus(args, settings, embedder):
    """(searcher, ids, vectors, texts, chunk documents, query texts, query vectors, timings)."""
    from bench.git_doc_text import page_stems, query_sentences, select_pages
    from indexer.lexical import LexicalIndex
    from indexer.metadata_map import MetadataMap
    from indexer.search import CorpusSearcher
    from indexer.vector_index import VectorIndex

    stems, used = page_stems(), set()
    pages, _ = select_pages(stems, "txt", args.real, 40, embedder, settings, used)
    real_texts = list(dict.fromkeys(c for p in pages for c in p.chunks))[: args.real]
    queries = query_sentences(stems, used, args.queries)
    started = time.perf_counter()
    real = embedder.encode(real_texts)
    query_vectors = embedder.encode(queries)
    embed_s = time.perf_counter() - started

    rng = np.random.default_rng(SEED)
    n = max(args.vectors, len(real))
    vectors = np.concatenate([real, synthesize(real, n - len(real), rng, args.sigma, args.mix)])
    texts = real_texts + [real_texts[i] for i in rng.integers(0, len(real_texts), n - len(real))]
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    documents = rng.permutation(n) // DOC_CHUNKS  # ten chunks to a document, scattered over the index
    metadata = [{"group": f"g{d % GROUPS}"} for d in range(int(documents.max()) + 1)]

    timings = {}
    started = time.perf_counter()
    vector = VectorIndex.empty(vectors.shape[1], exact_max=settings.exact_search_max_vectors,
                               hnsw_m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                               ef_search=settings.hnsw_ef_search)
    vector.add(ids, vectors)
    vector.search_one(vectors[0], K)  # builds the graph (graft does it when writing a generation)
    timings["vector index + graph"] = time.perf_counter() - started
    started = time.perf_counter()
    lexical = LexicalIndex.build(list(ids), texts)
    timings["BM25 index"] = time.perf_counter() - started
    started = time.perf_counter()
    metadata_map = MetadataMap(ids, documents, metadata)
    timings["metadata map"] = time.perf_counter() - started
    searcher = CorpusSearcher(embedder, vector, lexical, metadata_map)
    print(f"[bench] corpus of {n} chunks built: embedding {embed_s:.0f}s, "
          + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), file=sys.stderr)
    return searcher, ids, vectors, texts, documents, metadata, queries, query_vectors, len(real)


def exact_filtered(searcher, ids, vectors, allowed_rows, query, vector, k, mode):
    """The exact filtered top k (ids), as defined in the module docstring."""
    from indexer.hybrid import reciprocal_rank_fusion
    from indexer.search import hybrid_candidates

    allowed_ids = ids[allowed_rows]
    allowed_set = set(allowed_ids.tolist())

    def dense(n):
        scores = vectors[allowed_rows] @ vector
        top = np.argsort(-scores, kind="stable")[:n]
        return [(int(allowed_ids[i]), float(scores[i])) for i in top]

    def bm25(n):
        ranked = searcher.lexical.search(query, len(searcher.lexical))
        return [(c, s) for c, s in ranked if c in allowed_set][:n]

    if mode == "dense":
        return [c for c, _ in dense(k)]
    if mode == "bm25":
        return [c for c, _ in bm25(k)]
    c = hybrid_candidates(k)
    return [cid for cid, _ in reciprocal_rank_fusion([dense(c), bm25(c)], k)]


def recall(found: list[int], truth: list[int]) -> float | None:
    if not truth:
        return None  # nothing to find (bm25: no allowed chunk shares a term)
    return len(set(found) & set(truth)) / len(truth)


def bench_searches(args, searcher, ids, vectors, documents, metadata, queries, query_vectors):
    from indexer.search import CorpusSearcher

    chunk_groups = np.array([int(metadata[d]["group"][1:]) for d in documents])
    rows = []
    for share in args.shares:
        f = group_filter(share)
        allowed_rows = np.flatnonzero(chunk_groups < max(1, round(share * GROUPS)))
        allowed_set = set(ids[allowed_rows].tolist())
        fresh = CorpusSearcher(searcher.embedder, searcher.vector, searcher.lexical, searcher.metadata)
        started = time.perf_counter()
        fresh.allowed(f)
        resolve_ms = (time.perf_counter() - started) * 1000
        searcher.allowed(f)  # resolved once, as every later request with this filter finds it
        for mode in args.modes:
            lat_u, lat_f, recalls, counts, post = [], [], [], [], []
            for i, (query, vector) in enumerate(zip(queries, query_vectors)):
                arms = [None, f] if i % 4 in (0, 3) else [f, None]  # ABBA
                for arm in arms:
                    started = time.perf_counter()
                    hits = searcher.search(query, K, mode, query_vector=vector, filter=arm)
                    elapsed = (time.perf_counter() - started) * 1000
                    if arm is None:
                        lat_u.append(elapsed)
                        post.append(sum(c in allowed_set for c, _ in hits))
                    else:
                        lat_f.append(elapsed)
                        assert all(c in allowed_set for c, _ in hits), "a filtered search returned a refused chunk"
                        counts.append(len(hits))
                        r = recall([c for c, _ in hits],
                                   exact_filtered(searcher, ids, vectors, allowed_rows, query, vector, K, mode))
                        if r is not None:
                            recalls.append(r)
            rows.append({"share": share, "mode": mode, "allowed": len(allowed_rows), "resolve_ms": resolve_ms,
                         "u50": percentile(lat_u, 50), "u99": percentile(lat_u, 99),
                         "f50": percentile(lat_f, 50), "f99": percentile(lat_f, 99),
                         "recall": float(np.mean(recalls)) if recalls else float("nan"),
                         "hits": float(np.mean(counts)), "post": float(np.mean(post))})
            r = rows[-1]
            print(f"[bench] {share:.0%} {mode}: p50 {r['u50']:.2f} -> {r['f50']:.2f} ms, recall {r['recall']:.3f}",
                  file=sys.stderr)
    return rows


def sweep_paths(args, searcher, ids, vectors, documents, metadata, query_vectors) -> None:
    """Both dense paths of a filtered HNSW search at each share, forced: exact scoring of the
    subset, and the graph walk with a selector at efSearch, efSearch / sqrt(share) and
    efSearch / share. What indexer/vector_index.py's filtered_search_plan is chosen from."""
    vector = searcher.vector
    if vector.kind != "hnsw":
        return
    chunk_groups = np.array([int(metadata[d]["group"][1:]) for d in documents])
    hnsw = vector._current_hnsw()
    ef0 = max(vector.ef_search, K)
    print(LINE)
    print(f"Dense paths, forced, {len(vector)} vectors, {len(query_vectors)} queries: p50 ms (recall@10 vs exact); "
          f"graft's pick last")
    print(f"  {'share':>6}{'subset':>8}{'exact':>15}{'walk ef':>22}{'walk ef/sqrt(share)':>24}{'walk ef/share':>24}"
          f"{'graft':>13}")
    for share in args.sweep:
        f = group_filter(share)
        subset = searcher.allowed(f).vector
        rows = np.flatnonzero(chunk_groups < max(1, round(share * GROUPS)))
        arms = {"exact": None, "ef": ef0, "sqrt": min(int(np.ceil(ef0 / np.sqrt(share))), 4096),
                "share": min(int(np.ceil(ef0 / share)), 4096)}
        lat = {name: [] for name in arms}
        rec = {name: [] for name in arms}
        for q in query_vectors:
            scores = vectors[rows] @ q
            truth = set(ids[rows[np.argsort(-scores, kind="stable")[:K]]].tolist())
            query = np.ascontiguousarray(q.reshape(1, -1), dtype=np.float32)
            for name, ef in arms.items():
                started = time.perf_counter()
                with _one_thread():
                    hits = (vector._search_exact_subset(query, K, subset) if ef is None
                            else vector._search_hnsw_subset(hnsw, query, K, subset, ef))
                lat[name].append((time.perf_counter() - started) * 1000)
                rec[name].append(len({c for c, _ in hits} & truth) / K)
        cell = {n: f"{percentile(lat[n], 50):.2f} ({np.mean(rec[n]):.3f})" for n in arms}
        walks = [f"{arms[n]}: {cell[n]}" for n in ("ef", "sqrt", "share")]
        print(f"  {share:>6.0%}{len(subset):>8}{cell['exact']:>15}{walks[0]:>22}{walks[1]:>24}{walks[2]:>24}"
              f"{_graft_choice(vector, len(subset)):>13}")


def _graft_choice(vector, m: int) -> str:
    from indexer.vector_index import filtered_search_plan

    exact, ef = filtered_search_plan(m, len(vector), vector.ef_search, K)
    return "exact" if exact else f"walk ef {ef}"


def _one_thread():
    from indexer.vector_index import _one_omp_thread

    return _one_omp_thread()


def report_searches(rows, searcher, n_real, n_queries) -> bool:
    vector = searcher.vector
    print(LINE)
    print(f"Filtered search: {len(vector)} chunks ({n_real} real git-doc chunk embeddings + synthesized), "
          f"{searcher.metadata.documents} documents of {DOC_CHUNKS} chunks in {GROUPS} groups, "
          f"{n_queries} real queries, k={K}")
    print(f"graft VectorIndex kind {vector.kind} (M={vector.hnsw_m} efConstruction={vector.ef_construction} "
          f"efSearch={vector.ef_search}); latencies of CorpusSearcher.search, query embedded beforehand")
    header = (f"  {'filter keeps':>12}{'mode':>8}{'unfiltered p50':>16}{'filtered p50':>14}{'ratio':>8}"
              f"{'p99 u/f':>16}{'recall@10':>11}{'hits':>7}{'post-filter':>13}")
    print(header)
    ok = True
    for r in rows:
        ratio = r["f50"] / r["u50"]
        print(f"  {r['share']:>11.0%} {r['mode']:>8}{r['u50']:14.2f}ms{r['f50']:12.2f}ms{ratio:8.2f}"
              f"{r['u99']:8.2f}/{r['f99']:<7.2f}{r['recall']:11.3f}{r['hits']:7.1f}{r['post']:13.1f}")
        if abs(r["share"] - 0.01) < 1e-9:
            ok &= ratio <= GOAL_RATIO and r["recall"] >= GOAL_RECALL
    print("  hits: mean results of the filtered search (k=10); post-filter: what the unfiltered top 10 keeps")
    print("  first use of a filter in a generation (resolving its chunks): "
          + ", ".join(f"{r['share']:.0%} {r['resolve_ms']:.1f} ms" for r in rows if r["mode"] == rows[0]["mode"]))
    print(f"  goal at 1 %: every mode's filtered p50 <= {GOAL_RATIO}x unfiltered, recall@10 >= {GOAL_RECALL}: "
          f"{'PASS' if ok else 'FAIL'}")
    return ok


async def bench_planning(args, settings, searcher, ids, texts, documents, metadata, queries) -> None:
    """Planner.plan with and without a key's filter, over a SQLite store holding the corpus's rows."""
    from sqlalchemy import insert, select
    from transformers import AutoTokenizer

    from adapters_store.db import make_engine, make_session_factory
    from adapters_store.models import Chunk, Corpus, Document
    from indexer.generation import GenerationStore
    from indexer.registry import CorpusEntry, CorpusRegistry
    from service.auth import Principal
    from service.domains import DEFAULT_RETRIEVAL, DomainRoute, RoutingTable
    from service.rag.planner import Planner
    from service.rag.prompt import PromptBuilder
    from service.rag.retrieval import Retriever

    started = time.perf_counter()
    db = make_engine(settings.resolved_database_url)
    sessions = make_session_factory(db)
    with sessions() as session, session.begin():
        corpus = Corpus(name="bench", chunk_size=settings.default_chunk_size, chunk_overlap=32,
                        embedding_model=settings.embedding_model)
        session.add(corpus)
        session.flush()
        corpus_id = corpus.id
        session.execute(insert(Document), [
            {"id": d + 1, "corpus_id": corpus_id, "external_id": f"doc-{d}", "content_sha256": "-",
             "doc_metadata": m, "bytes": 0, "chunk_count": DOC_CHUNKS} for d, m in enumerate(metadata)])
        for start in range(0, len(ids), 20_000):
            session.execute(insert(Chunk), [
                {"id": int(ids[i]), "corpus_id": corpus_id, "document_id": int(documents[i]) + 1, "ordinal": 0,
                 "text": texts[i], "start_char": 0, "end_char": 0} for i in range(start, min(start + 20_000, len(ids)))])
    with db.connect() as connection:
        created_at = connection.execute(select(Corpus.created_at).where(Corpus.id == corpus_id)).scalar_one()
    registry = CorpusRegistry(GenerationStore(settings.indexes_dir), sessions=sessions)
    registry._entries[corpus_id] = CorpusEntry(corpus_id, settings.embedding_model, None, searcher,
                                               incarnation=created_at)
    routing = RoutingTable(settings.base_model_name)
    routing.put(DomainRoute("bench", ("bench",), settings.base_model_name, None, None,
                            retrieval={**DEFAULT_RETRIEVAL, "k": 4}))
    tokenizer = AutoTokenizer.from_pretrained(settings.resolved_base_model)
    planner = Planner(settings.base_model_name, routing, Retriever(db, registry),
                      PromptBuilder(tokenizer, settings.max_model_len))
    print(f"[bench] planning store ready in {time.perf_counter() - started:.0f}s", file=sys.stderr)

    f = group_filter(0.01)
    allowed = {f"doc-{d}" for d, m in enumerate(metadata) if m["group"] == "g0"}
    lat = {None: [], f: []}
    passages = []
    bodies = [{"model": "bench", "messages": [{"role": "user", "content": q}], "max_tokens": 16} for q in queries]
    for body in bodies[:20]:  # warm-up
        await planner.plan("chat", body, gateway_idle=True)
    for i, body in enumerate(bodies):
        for arm in ([None, f] if i % 4 in (0, 3) else [f, None]):
            started = time.perf_counter()
            key = Principal(None, "inference", filter=arm) if arm is not None else None
            plan = await planner.plan("chat", body, gateway_idle=True, principal=key)
            lat[arm].append((time.perf_counter() - started) * 1000)
            if arm is not None:
                assert all(c["document_id"] in allowed for c in plan.citations)
                passages.append(len(plan.citations))
    planner.close()
    db.dispose()
    u50, f50 = percentile(lat[None], 50), percentile(lat[f], 50)
    print(LINE)
    print(f"Completion planning (Planner.plan, chat, hybrid k=4, SQLite store of {len(ids)} chunk rows, "
          f"{len(bodies)} real questions; query embedding included)")
    print(f"  {'':28}{'no filter':>12}{'key filter 1 %':>16}{'ratio':>8}")
    print(f"  {'p50 (ms)':28}{u50:12.2f}{f50:16.2f}{f50 / u50:8.2f}")
    print(f"  {'p99 (ms)':28}{percentile(lat[None], 99):12.2f}{percentile(lat[f], 99):16.2f}"
          f"{percentile(lat[f], 99) / percentile(lat[None], 99):8.2f}")
    print(f"  passages per filtered plan: mean {np.mean(passages):.2f} of 4 (every one of an allowed document)")


async def main(args) -> int:
    from indexer.embedding import Embedder

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="graft-bench-filter-") as tmp:
        settings = migrated_settings(Path(tmp) / "data", Path(args.base_model),
                                     engine_urls=[f"http://127.0.0.1:{free_port()}"], port=free_port())
        embedder = Embedder.load(settings.embedding_model, backend=settings.embedding_backend,
                                 onnx_cache_dir=settings.resolved_embedding_cache_dir)
        searcher, ids, vectors, texts, documents, metadata, queries, query_vectors, n_real = \
            build_corpus(args, settings, embedder)
        rows = bench_searches(args, searcher, ids, vectors, documents, metadata, queries, query_vectors)
        ok = report_searches(rows, searcher, n_real, len(queries))
        if args.sweep:
            sweep_paths(args, searcher, ids, vectors, documents, metadata, query_vectors)
        if not args.skip_planning:
            await bench_planning(args, settings, searcher, ids, texts, documents, metadata, queries)
    print(LINE)
    print(f"total bench time {time.perf_counter() - started:.0f}s")
    return 0 if ok else 1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000, help="chunks in the corpus (default 100000)")
    parser.add_argument("--real", type=int, default=1000, help="real git-doc chunks to embed (default 1000)")
    parser.add_argument("--queries", type=int, default=300, help="held-out real queries (default 300)")
    parser.add_argument("--shares", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.05, 0.1, 0.5],
                        help="shares of the chunks the filters keep (default 0.01,0.05,0.1,0.5)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["dense", "bm25", "hybrid"],
                        help="search modes (default dense,bm25,hybrid)")
    parser.add_argument("--sigma", type=float, default=0.03, help="noise per dimension of synthesized vectors")
    parser.add_argument("--mix", type=float, default=0.5, help="largest weight of the second real vector")
    parser.add_argument("--skip-planning", action="store_true", help="skip the completion planning part")
    parser.add_argument("--sweep", type=lambda s: [float(x) for x in s.split(",")] if s else [],
                        default=[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0],
                        help="shares at which both dense paths are forced and timed ('' to skip)")
    parser.add_argument("--base-model", default=str(DEFAULT_BASE_MODEL),
                        help="prepared HF model folder (its tokenizer builds the prompts)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
