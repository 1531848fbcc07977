"""Does a composed adapter keep what each source adds? bench/lore.py's made-up corpus, its held-out
questions, graft's own trainings (`reader` and `memorize`, as bench/train.py trains them), a version
composed from the two (POST /v1/adapters/{a}/versions with a JSON `compose` body), and evaluation
runs on a real vLLM, with retrieval and closed book, for each of the three adapters side by side.

Goal: the composed adapter within 0.05 of the better source on both columns.

    .venv/bin/python -m bench.compose [--docs 20] [--max-examples 80] [--method cat] [--weights 1 1]
        [--reader DIR --memorize DIR] [--engine-url URL]

--reader/--memorize upload PEFT adapter folders trained before (e.g. by bench.train's jobs) instead
of training them here (the trainings take most of the hour this runs on 2 CPU cores).
"""

import argparse
import asyncio
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import lore_domain  # noqa: E402
from bench.lore import corpus_and_qa  # noqa: E402
from bench.train import accuracy, train  # noqa: E402

GOAL = 0.05
RECIPES = ("reader", "memorize")


async def source(http, recipe: str, folder: str | None, args) -> dict:
    """The stored version of the `recipe` adapter: uploaded from `folder`, or trained here."""
    adapter = f"lore-{recipe}"
    if folder:
        files = [("files", (name, (Path(folder) / name).read_bytes(), "application/octet-stream"))
                 for name in ("adapter_config.json", "adapter_model.safetensors")]
        response = await http.post(f"/v1/adapters/{adapter}/versions", files=files)
        if response.status_code != 201:
            raise SystemExit(response.text)
        return {"adapter": adapter, "version": response.json()["version"]}
    trained, seconds = await train(http, adapter, recipe, args)
    print(f"{adapter}: trained in {seconds:.0f} s")
    return {"adapter": adapter, "version": trained["version"]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--epochs", type=int, help="default: the recipe's (service.training_data)")
    parser.add_argument("--max-examples", type=int, default=80)
    parser.add_argument("--learning-rate", type=float, help="default: the recipe's")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--method", default="cat", help="a compose method (adapters_store/compose.py METHODS)")
    parser.add_argument("--weights", type=float, nargs=2, default=[1.0, 1.0], metavar=("READER", "MEMORIZE"))
    parser.add_argument("--density", type=float, help="for the ties, dare and magnitude_prune methods")
    parser.add_argument("--reader", help="a trained reader adapter folder to upload instead of training")
    parser.add_argument("--memorize", help="a trained memorize adapter folder to upload instead of training")
    parser.add_argument("--engine-url")
    parser.add_argument("--dump-examples", type=Path, help="a folder for each training's examples, the trained "
                                                           "adapters (upload them later with --reader/--memorize) "
                                                           "and each evaluation's answers")
    args = parser.parse_args()
    docs, qa = corpus_and_qa(args.docs)
    async with lore_domain(args.engine_url, docs, "graft-bench-compose-") as http:
        items = [{"question": q, "answers": answers, "document_ids": [doc]} for q, answers, doc in qa]
        await http.post("/v1/evalsets", json={"name": "lore-qa", "items": items})
        print(f"lore: {len(docs)} documents, {len(items)} held-out questions; compose {args.method}, "
              f"weights reader {args.weights[0]:g}, memorize {args.weights[1]:g}")
        sources = {recipe: await source(http, recipe, getattr(args, recipe), args) for recipe in RECIPES}
        body = {"method": args.method, "sources": [{**sources[r], "weight": w} for r, w in zip(RECIPES, args.weights)]}
        if args.density is not None:
            body["density"] = args.density
        made = await http.post("/v1/adapters/lore-both/versions", json={"compose": body})
        if made.status_code != 201:
            raise SystemExit(made.text)
        arms = {**sources, "composed": {"adapter": "lore-both", "version": made.json()["version"]}}
        def dump(arm: str, column: str) -> Path | None:
            return args.dump_examples and args.dump_examples / f"{arm}-{column}.jsonl"

        scores = {"base": (await accuracy(http, args.max_tokens, dump("base", "with-retrieval")),
                           await accuracy(http, args.max_tokens, dump("base", "closed-book"), retrieval=False))}
        for arm, ref in arms.items():
            adapter = {"name": ref["adapter"], "version": ref["version"]}
            scores[arm] = (await accuracy(http, args.max_tokens, dump(arm, "with-retrieval"), adapter=adapter),
                           await accuracy(http, args.max_tokens, dump(arm, "closed-book"), adapter=adapter,
                                          retrieval=False))

    print(f"\n{'':<16} {'with retrieval':>15} {'closed book':>12}")
    for arm, (rag, closed) in scores.items():
        print(f"{arm:<16} {rag:>15.3f} {closed:>12.3f}")
    for column, label in ((0, "with retrieval"), (1, "closed book")):
        best = max(scores["reader"][column], scores["memorize"][column])
        gap = scores["composed"][column] - best
        print(f"{label}: composed {scores['composed'][column]:.3f} vs better source {best:.3f} "
              f"({gap:+.3f}; goal within {GOAL}) -> {'PASS' if gap >= -GOAL else 'FAIL'}")


if __name__ == "__main__":
    asyncio.run(main())
