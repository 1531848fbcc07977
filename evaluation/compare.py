"""Compare two evaluation runs item by item: paired bootstrap intervals and wins/losses.

Run A is the reference (e.g. the current binding), run B the candidate: deltas are B - A and a win
is an item where B scores higher.
"""

import numpy as np

from evaluation.metrics import METRICS

# Bootstrap means are computed in blocks of about this many sampled values, bounding memory.
_BLOCK_VALUES = 1_000_000


def _pairs(a: list[float | None], b: list[float | None]) -> list[tuple[float, float]]:
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    return [(x, y) for x, y in zip(a, b) if x is not None and y is not None]


def paired_bootstrap(a: list[float | None], b: list[float | None], *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> dict | None:
    """Means over the pairs where both scores exist, delta = mean_b - mean_a, and the percentile
    bootstrap interval [low, high] of the mean difference, resampling pairs (deterministic for a
    seed). None when no pair has both scores."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    pairs = _pairs(a, b)
    if not pairs:
        return None
    values = np.asarray(pairs, dtype=float)
    diffs = values[:, 1] - values[:, 0]
    n = len(diffs)
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_VALUES // n)
    means = np.concatenate([
        diffs[rng.integers(0, n, size=(min(block, resamples - start), n))].mean(axis=1)
        for start in range(0, resamples, block)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    mean_a, mean_b = float(values[:, 0].mean()), float(values[:, 1].mean())
    return {"mean_a": mean_a, "mean_b": mean_b, "delta": float(diffs.mean()),
            "low": float(low), "high": float(high), "n": n}


def wins_losses(a: list[float | None], b: list[float | None]) -> dict[str, int]:
    """Per item, over the pairs where both scores exist: B higher is a win, lower a loss."""
    result = {"wins": 0, "losses": 0, "ties": 0}
    for x, y in _pairs(a, b):
        result["wins" if y > x else "losses" if y < x else "ties"] += 1
    return result


def compare_runs(items_a: dict[str, dict], items_b: dict[str, dict], *, resamples: int = 10_000,
                 confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Per metric of METRICS, over the item ids both runs have: paired_bootstrap's fields (None and
    n = 0 when no item has the metric in both runs) plus wins, losses and ties."""
    common = [item_id for item_id in items_a if item_id in items_b]
    result = {}
    for name in METRICS:
        a = [items_a[i].get(name) for i in common]
        b = [items_b[i].get(name) for i in common]
        interval = paired_bootstrap(a, b, resamples=resamples, confidence=confidence, seed=seed)
        if interval is None:
            interval = {"mean_a": None, "mean_b": None, "delta": None, "low": None, "high": None,
                        "n": 0}
        result[name] = {**interval, **wins_losses(a, b)}
    return result
