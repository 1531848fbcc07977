"""Fusion of several rankings of the same chunk ids."""


def reciprocal_rank_fusion(rankings: list[list[tuple[int, float]]], k: int,
                           rrf_k: int = 60) -> list[tuple[int, float]]:
    """Top k of the rankings fused by RRF: score(id) = sum over rankings of 1 / (rrf_k + rank).

    Ranks start at 1; each input is best first and its own scores are ignored (they are not
    comparable across retrievers). Ties keep the order in which ids were first seen.
    """
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (chunk_id, _score) in enumerate(ranking, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)[:max(k, 0)]
