"""Fusion of several rankings of the same chunk ids."""

# RRF's constant: lower weighs each retriever's first ranks more. 60 (Cormack et al.) suits long
# result lists; graft fuses for a top k of a few passages. On bench/eval.py's 48 git-doc questions
# (chosen on that set, so read it with care) hybrid hit@5 went 0.896 -> 0.958 and MRR@5
# 0.819 -> 0.829 from 60 to 10; with contextual headers 0.917 -> 0.938.
RRF_K = 10


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], k: int,
                           rrf_k: int = RRF_K) -> list[tuple[int, float]]:
    """Top k of the rankings fused by RRF: score(id) = sum over rankings of 1 / (rrf_k + rank).

    Ranks start at 1; each input is best first and its own scores are ignored (they are not
    comparable across retrievers). Ties keep the order in which ids were first seen.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _score) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)[:max(k, 0)]
