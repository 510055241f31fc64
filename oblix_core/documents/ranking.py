"""Hybrid ranking: keyword and vector results fused by reciprocal rank (Cormack et al., 2009).

Each list votes ``1 / (K + rank)`` for each chunk it holds; a chunk both lists found
rises above one only one list found. Ranks, not scores, are fused, so BM25 and cosine
scores need no common scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from oblix_core.documents.records import SearchHit

#: The usual constant: it damps the difference between the first few ranks.
K = 60


def reciprocal_rank_fusion(
    lists: Sequence[Sequence[SearchHit]], k: int, constant: int = K
) -> list[SearchHit]:
    """The ``k`` best chunks of ``lists`` (each best first), scored by the sum of their reciprocal ranks."""
    scores: dict[str, float] = {}
    hits: dict[str, SearchHit] = {}
    for ranked in lists:
        for rank, hit in enumerate(ranked, start=1):
            key = hit.chunk.id
            scores[key] = scores.get(key, 0.0) + 1.0 / (constant + rank)
            hits.setdefault(key, hit)
    order = sorted(scores, key=lambda key: (-scores[key], key))
    return [attrs.evolve(hits[key], score=scores[key]) for key in order[:k]]
