"""Score the outputs of a `bench.eval --dump-items` run again with the answer metrics of another
commit, beside the metrics of this tree: the same outputs, so only the metric code differs.

    .venv/bin/python -m bench.eval_rescore DUMP [--metrics-at REV]

REV defaults to c274e41, the last commit before the SQuAD normalisation and marker dropping.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from evaluation import metrics as current

REPO = Path(__file__).resolve().parent.parent
ANSWER_METRICS = ("answer_contains", "answer_f1", "exact_match")


def metrics_at(rev: str):
    """evaluation/metrics.py as it was at `rev`, loaded as a module of its own."""
    source = subprocess.run(["git", "show", f"{rev}:evaluation/metrics.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source)
    spec = importlib.util.spec_from_file_location(f"metrics_{rev}", file.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(file.name).unlink()
    return module


def means(module, items: list[dict], answers: dict[str, list[str]]) -> dict[str, float | None]:
    result = {}
    for name in ANSWER_METRICS:
        scores = [getattr(module, name)(item["output"], answers[item["id"]]) for item in items]
        scores = [s for s in scores if s is not None]
        result[name] = sum(scores) / len(scores) if scores else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dump", type=Path)
    parser.add_argument("--metrics-at", default="c274e41")
    args = parser.parse_args()
    dump = json.loads(args.dump.read_text())
    answers = {item["id"]: item["answers"] for item in dump["evalset"]}
    old = metrics_at(args.metrics_at)
    print(f"{'run':<16} {'metric':<16} {args.metrics_at:>8} {'now':>8} {'stored':>8}")
    for label in ("with retrieval", "closed book"):
        run = dump[label]
        before, after = means(old, run["items"], answers), means(current, run["items"], answers)
        for name in ANSWER_METRICS:
            stored = run["metrics"].get(name)
            print(f"{label:<16} {name:<16} {before[name]:>8.3f} {after[name]:>8.3f} "
                  f"{'-' if stored is None else f'{stored:.3f}':>8}")


if __name__ == "__main__":
    sys.exit(main())
