"""The recommended difficulty mix for the next data round (the seeds' curriculum optimizer).

The rule (docs/evaluator.md): every difficulty gets a floor share `min_share` (so none is
forgotten), and the rest is split in proportion to its error rate, 1 - exact match.
With n difficulties the floor is capped at 1/n; with no errors anywhere the mix is uniform.

    share(d) = floor + (1 - n * floor) * error(d) / sum(error)

Example: errors easy 0.1, medium 0.3, hard 0.6, floor 0.1 -> 0.1 + 0.7 * (0.1, 0.3, 0.6)
= 0.17, 0.31, 0.52.
"""

from __future__ import annotations

from collections.abc import Mapping


def recommended_mix(exact_match: Mapping[str, float], min_share: float) -> dict[str, float]:
    """Share of the next round per difficulty (sums to 1), from per-difficulty exact match."""
    if not exact_match:
        return {}
    n = len(exact_match)
    floor = min(max(min_share, 0.0), 1.0 / n)
    errors = {d: min(1.0, max(0.0, 1.0 - em)) for d, em in exact_match.items()}
    total = sum(errors.values())
    if total <= 0.0:
        return {d: 1.0 / n for d in sorted(errors)}
    rest = 1.0 - n * floor
    return {d: floor + rest * errors[d] / total for d in sorted(errors)}
