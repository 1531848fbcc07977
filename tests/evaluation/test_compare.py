import pytest

from evaluation.compare import compare_runs, paired_bootstrap, wins_losses
from evaluation.metrics import METRICS


def test_identical_runs_have_zero_delta_and_interval():
    scores = [0.0, 1.0, 0.5, 1.0, 0.25]
    result = paired_bootstrap(scores, list(scores))
    assert result == {"mean_a": 0.55, "mean_b": 0.55, "delta": 0.0, "low": 0.0, "high": 0.0, "n": 5}


def test_constant_shift_gives_the_shift_as_interval():
    # a constant difference: every resample has the same mean, so the interval has width 0
    a = [0.1, 0.4, 0.2, 0.3]
    b = [x + 0.25 for x in a]
    result = paired_bootstrap(a, b)
    # every resampled mean difference is 0.25, so the interval collapses onto it
    assert result["delta"] == pytest.approx(0.25)
    assert result["low"] == pytest.approx(0.25) and result["high"] == pytest.approx(0.25)
    assert result["mean_a"] == pytest.approx(0.25) and result["mean_b"] == pytest.approx(0.5)


# The bootstrap distribution of a mean of n paired differences has the differences' standard
# deviation (population form) over sqrt(n); for large n it is close to normal, so the 95 %
# percentile interval is about the textbook 2 * 1.96 * sd / sqrt(n) wide. The resampling adds a few
# per cent of error (10,000 resamples; means on a grid of 1/n): 10 % tolerance, three seeds.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_coin_flip_difference_has_the_textbook_width(seed):
    # 400 items: A always 0, B right on exactly half: differences 200 x 1 and 200 x 0,
    # mean 0.5, sd = sqrt(0.5 * 0.5) = 0.5 -> width 2 * 1.96 * 0.5 / 20 = 0.098
    a = [0.0] * 400
    b = [1.0, 0.0] * 200
    result = paired_bootstrap(a, b, seed=seed)
    assert result["delta"] == 0.5 and result["n"] == 400
    assert result["high"] - result["low"] == pytest.approx(0.098, rel=0.10)
    # and centred on the delta: each end about 1.96 * 0.025 = 0.049 away
    assert result["delta"] - result["low"] == pytest.approx(0.049, rel=0.15)
    assert result["high"] - result["delta"] == pytest.approx(0.049, rel=0.15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_independent_fair_coins_have_the_textbook_width(seed):
    # 400 items, every (A, B) outcome of two fair coins equally often: 100 each of (0, 0), (1, 1),
    # (0, 1), (1, 0). Differences: 200 x 0, 100 x +1, 100 x -1: mean 0, variance 200/400 = 0.5,
    # sd = 0.7071 -> width 2 * 1.96 * 0.7071 / 20 = 0.13859
    a = [0.0] * 100 + [1.0] * 100 + [0.0] * 100 + [1.0] * 100
    b = [0.0] * 100 + [1.0] * 100 + [1.0] * 100 + [0.0] * 100
    result = paired_bootstrap(a, b, seed=seed)
    assert result["delta"] == 0.0 and (result["mean_a"], result["mean_b"]) == (0.5, 0.5)
    assert result["high"] - result["low"] == pytest.approx(0.13859, rel=0.10)
    assert result["low"] < 0.0 < result["high"]


def test_interval_brackets_the_delta_and_is_deterministic():
    a = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    b = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    first = paired_bootstrap(a, b, seed=7)
    assert first == paired_bootstrap(a, b, seed=7)
    assert first["delta"] == pytest.approx(0.3)  # 0.7 - 0.4
    assert first["low"] < first["delta"] < first["high"]
    assert -1.0 <= first["low"] and first["high"] <= 1.0
    # a wider confidence gives a wider (or equal) interval
    wide = paired_bootstrap(a, b, seed=7, confidence=0.99)
    assert wide["low"] <= first["low"] and wide["high"] >= first["high"]


def test_the_seed_drives_the_resampling():
    a = [0.11, 0.93, 0.42, 0.27, 0.68, 0.05, 0.74, 0.39]
    b = [0.52, 0.88, 0.61, 0.12, 0.97, 0.33, 0.70, 0.45]
    assert paired_bootstrap(a, b, seed=1) == paired_bootstrap(a, b, seed=1)
    assert paired_bootstrap(a, b, seed=1) != paired_bootstrap(a, b, seed=2)


def test_bootstrap_pairs_skip_none():
    # pairs with both scores: (1, 0) and (0.5, 1.0) -> mean_a 0.75, mean_b 0.5, delta -0.25
    result = paired_bootstrap([1.0, None, 0.5, 0.2], [0.0, 0.3, 1.0, None], resamples=200)
    assert result["n"] == 2
    assert result["mean_a"] == 0.75 and result["mean_b"] == 0.5 and result["delta"] == -0.25
    assert paired_bootstrap([None, 1.0], [0.0, None]) is None
    assert paired_bootstrap([], []) is None


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 0.0])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0], confidence=1.0)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0], resamples=0)


def test_wins_losses():
    a = [0.0, 1.0, 0.5, None, 0.5]
    b = [1.0, 0.0, 0.5, 1.0, 0.75]
    # win (0 -> 1), loss (1 -> 0), tie, skipped (None), win (0.5 -> 0.75)
    assert wins_losses(a, b) == {"wins": 2, "losses": 1, "ties": 1}


def test_compare_runs_over_common_items():
    none = dict.fromkeys(METRICS)
    items_a = {"q1": {**none, "hit_at_k": 0.0, "answer_f1": 0.5},
               "q2": {**none, "hit_at_k": 1.0, "answer_f1": 0.5},
               "only_a": {**none, "hit_at_k": 0.0}}
    items_b = {"q2": {**none, "hit_at_k": 1.0, "answer_f1": 1.0},
               "q1": {**none, "hit_at_k": 1.0, "answer_f1": 0.5},
               "only_b": {**none, "hit_at_k": 1.0}}
    result = compare_runs(items_a, items_b, resamples=500)
    assert set(result) == set(METRICS)
    hit = result["hit_at_k"]  # q1: 0 -> 1 (win), q2: 1 -> 1 (tie)
    assert (hit["mean_a"], hit["mean_b"], hit["delta"], hit["n"]) == (0.5, 1.0, 0.5, 2)
    assert (hit["wins"], hit["losses"], hit["ties"]) == (1, 0, 1)
    assert 0.0 <= hit["low"] <= hit["high"] <= 1.0
    f1 = result["answer_f1"]  # q1 tie, q2 0.5 -> 1.0 win
    assert (f1["delta"], f1["wins"], f1["ties"]) == (0.25, 1, 1)
    # no item has the metric in both runs: same shape, nulls
    assert result["exact_match"] == {"mean_a": None, "mean_b": None, "delta": None, "low": None,
                                     "high": None, "n": 0, "wins": 0, "losses": 0, "ties": 0}


def test_large_runs_stay_deterministic_across_blocks():
    # 2,000 items x 10,000 resamples exceeds one block of sampled values: several blocks are drawn
    a = [float(i % 2) for i in range(2000)]
    b = [float(i % 3 == 0) for i in range(2000)]
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
