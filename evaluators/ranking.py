"""The ranking of the last K checkpoints: composite score, then exact match, then step.

Why its own module: the ranking orders checkpoints by their own figures, while a comparison
(evaluators/compare.py) pairs two checkpoints' outcomes; the daemon publishes both. Only the
last K (`evaluator.last_k`) are ranked, so that the ranking series stay bounded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ranked:
    """One of the last K checkpoints in the ranking (rank 1 is the best)."""

    rank: int
    step: int
    checkpoint: str
    composite_score: float | None
    exact_match: float


def rank(entries: Sequence[tuple[int, str, float | None, float]], last_k: int) -> list[Ranked]:
    """Rank the last K checkpoints (by step) of (step, checkpoint, composite, exact match).

    Ordered by composite score (a checkpoint without one ranks after those with one), then
    exact match, then the later step.
    """
    recent = sorted(entries, key=lambda e: e[0])[-last_k:]
    ordered = sorted(
        recent,
        key=lambda e: (e[2] is not None, e[2] if e[2] is not None else 0.0, e[3], e[0]),
        reverse=True,
    )
    return [Ranked(i + 1, s, c, score, em) for i, (s, c, score, em) in enumerate(ordered)]
