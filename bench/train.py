"""Does a trained adapter add knowledge? bench/lore.py's made-up corpus (the base model cannot
know it), its questions held out from training (training questions are synthesized from the chunks,
these are phrased by hand), through graft's own training jobs and evaluation runs on a real vLLM:

  - with retrieval: base model vs a `reader` adapter (goal: +10 points of answer accuracy);
  - closed book: base vs a `memorize` adapter, as a share of what retrieval achieves (goal >= 50 %).

    .venv/bin/python -m bench.train [--docs 20] [--max-examples 80] [--recipes reader memorize] [--engine-url URL]
    .venv/bin/python -m bench.train --corpus git-doc --recipes reader [--max-examples 60]

`--corpus git-doc`: real documentation instead, Debian's git-doc pages of bench/git_doc_questions.py
(extracted as graft extracts HTML, uploaded as text documents named after the page) and its 48
questions phrased as users ask them, scored by answer_contains (the command's name in the answer).

Each recipe trains with its defaults (reader: 2 epochs at lr 5e-4; memorize: 12 at 1e-3) unless
--epochs / --learning-rate say otherwise.

Accuracy is answer_contains (the expected name occurs in the answer). Training tokens/s against a
plain PEFT loop is bench/train_speed.py.
"""

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import lore_domain, wait_job  # noqa: E402
from bench.lore import corpus_and_qa  # noqa: E402


def git_doc_corpus() -> tuple[list[dict], list[dict]]:
    """bench/git_doc_questions.py's pages as text documents (named after the page) and its questions."""
    from bench.git_doc_questions import PAGES, QUESTIONS
    from indexer.extract import extract

    docs = []
    for name in PAGES:
        (doc,) = extract("html", (Path("/usr/share/doc/git-doc") / name).read_bytes(), max_pdf_pages=10,
                         timeout_s=60)
        docs.append({"id": name, "text": doc.text})
    items = [{"question": q, "answers": answers, "document_ids": pages} for q, pages, answers in QUESTIONS]
    return docs, items


async def finished(http, job_id: str) -> dict:
    job = await wait_job(http, job_id, timeout_s=7200)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} {job['status']}: {job.get('reason')}")
    return job


async def accuracy(http, max_tokens: int, dump: Path | None = None, **body) -> float:
    """answer_contains of an evaluation run; with `dump`, its items (question, output, scores) go there as JSONL."""
    response = await http.post("/v1/evals", json={"domain": "lore", "evalset": "lore-qa",
                                                  "max_tokens": max_tokens, **body})
    if response.status_code != 202:
        raise SystemExit(f"the evaluation was refused: {response.status_code} {response.text}")
    job = await finished(http, response.json()["job_id"])
    eval_id = job["result"]["eval_id"]
    run = (await http.get(f"/v1/evals/{eval_id}")).json()
    if dump is not None:
        items = (await http.get(f"/v1/evals/{eval_id}/items")).json()["items"]
        dump.parent.mkdir(parents=True, exist_ok=True)
        dump.write_text("".join(json.dumps(item) + "\n" for item in items))
        print(f"{dump.stem}: answers written to {dump}", flush=True)
    return run["metrics"]["answer_contains"]


async def keep_adapter(http, adapter: str, version: int, folder: Path) -> None:
    """The trained version's files, so that a later run can upload it instead of training again."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        response = await http.get(f"/v1/adapters/{adapter}/versions/{version}/files/{name}")
        response.raise_for_status()
        (folder / name).write_bytes(response.content)
    print(f"{adapter}@{version}: files kept in {folder}", flush=True)


async def train(http, adapter: str, recipe: str, args) -> tuple[dict, float]:
    started = time.perf_counter()
    body = {"corpus": "lore", "recipe": recipe, "rank": 8, "max_examples": args.max_examples}
    body.update({k: v for k, v in (("epochs", args.epochs), ("learning_rate", args.learning_rate)) if v})
    response = await http.post(f"/v1/adapters/{adapter}/trainings", json=body)
    if response.status_code != 202:
        raise SystemExit(response.text)
    job_id = response.json()["job_id"]
    job = await finished(http, job_id)
    if args.dump_examples:
        examples = await http.get(f"/v1/jobs/{job_id}/examples")
        path = args.dump_examples / f"{adapter}-examples.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(examples.content)
        print(f"{adapter}: training examples written to {path}")
        await keep_adapter(http, adapter, job["result"]["version"], args.dump_examples / adapter)
    return job["result"], time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--epochs", type=int, help="default: the recipe's (service.training_data)")
    parser.add_argument("--max-examples", type=int, default=80)
    parser.add_argument("--learning-rate", type=float, help="default: the recipe's")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--recipes", nargs="+", choices=("reader", "memorize"), default=["reader", "memorize"])
    parser.add_argument("--engine-url")
    parser.add_argument("--corpus", choices=("lore", "git-doc"), default="lore")
    parser.add_argument("--dump-examples", type=Path, help="a folder for each training's examples and each "
                                                           "evaluation's answers (JSONL), and the trained adapters")
    args = parser.parse_args()
    if args.corpus == "git-doc":
        docs, items = git_doc_corpus()
    else:
        docs, qa = corpus_and_qa(args.docs)
        items = [{"question": q, "answers": answers, "document_ids": [doc]} for q, answers, doc in qa]
    async with lore_domain(args.engine_url, docs, "graft-bench-train-") as http:
        await http.post("/v1/evalsets", json={"name": "lore-qa", "items": items})
        print(f"{args.corpus}: {len(docs)} documents, {len(items)} held-out questions; "
              f"epochs {args.epochs or 'default'}, "
              f"max_examples {args.max_examples}, lr {args.learning_rate or 'default'}")

        dump = args.dump_examples
        base_rag = await accuracy(http, args.max_tokens, dump and dump / "base-with-retrieval.jsonl")
        base_closed = await accuracy(http, args.max_tokens, dump and dump / "base-closed-book.jsonl", retrieval=False)
        print(f"base: with retrieval {base_rag:.3f}, closed book {base_closed:.3f}", flush=True)
        adapters, seconds, scores = {}, {}, {}
        for recipe in args.recipes:
            adapter = f"lore-{recipe}"
            trained, seconds[adapter] = await train(http, adapter, recipe, args)
            print(f"{adapter}: version {trained['version']} trained in {seconds[adapter]:.0f} s", flush=True)
            closed_book = {} if recipe == "reader" else {"retrieval": False}  # the API takes false or settings
            scores[recipe] = await accuracy(http, args.max_tokens, dump and dump / f"{adapter}-answers.jsonl",
                                            adapter={"name": adapter, "version": trained["version"]},
                                            **closed_book)
            adapters[adapter] = (await http.get(f"/v1/adapters/{adapter}/versions")).json()["data"][-1]

    print(f"\n{'':<28} {'base':>6} {'adapter':>8} {'goal':>24}")
    if "reader" in scores:
        gain = scores["reader"] - base_rag
        print(f"{'with retrieval (reader)':<28} {base_rag:>6.3f} {scores['reader']:>8.3f}   +0.10 -> "
              f"{'PASS' if gain >= 0.10 else 'FAIL'} ({gain:+.3f})")
    if "memorize" in scores:
        share = scores["memorize"] / base_rag if base_rag else float("nan")
        print(f"{'closed book (memorize)':<28} {base_closed:>6.3f} {scores['memorize']:>8.3f}   >= 50 % of RAG -> "
              f"{'PASS' if share >= 0.5 else 'FAIL'} ({share:.0%} of {base_rag:.3f})")
    for adapter, version in adapters.items():
        p = version["provenance"]
        print(f"{adapter}: {p['examples']} examples, final loss {p['loss']['final']:.3f}, job {seconds[adapter]:.0f} s")
        for corpus, q in (p.get("questions") or {}).items():
            print(f"  questions of {corpus}: {q['chunks']} chunks, kept share {q['kept_share']}, "
                  f"{q['writer_calls']} writer calls in {q['seconds']} s; e.g. {q['sample'][:3]}")


if __name__ == "__main__":
    asyncio.run(main())
