import pytest

from indexer.hybrid import reciprocal_rank_fusion


def test_rrf_scores_and_order():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    bm25 = [(3, 12.0), (1, 9.0), (4, 1.0)]
    fused = reciprocal_rank_fusion([dense, bm25], k=10)
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    scores = dict(fused)  # the default constant is RRF_K = 10
    assert scores[1] == pytest.approx(1 / 11 + 1 / 12)
    assert scores[3] == pytest.approx(1 / 13 + 1 / 11)
    assert scores[4] == pytest.approx(1 / 13)


def test_rrf_k_and_constant():
    fused = reciprocal_rank_fusion([[(5, 1.0), (6, 0.5)], [(6, 3.0)]], k=1, rrf_k=0)
    assert fused == [(6, pytest.approx(1 / 2 + 1 / 1))]


def test_rrf_empty_inputs():
    assert reciprocal_rank_fusion([], k=5) == []
    assert reciprocal_rank_fusion([[], []], k=5) == []
    assert reciprocal_rank_fusion([[(1, 1.0)]], k=0) == []
