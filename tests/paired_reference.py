"""Paired statistics written out again, for tests that check what the evaluator reports.

Why a second copy: a test that compares a reported drop or p-value with the same function
that produced it proves nothing. This module computes them from the per-example results
(the evaluator's state file, or `tunewatch compare`'s table) by another route: the exact
McNemar p-value as the total probability of every split of the discordant pairs no likelier
than the observed one (evaluators/stats.py doubles the smaller tail instead; for a fair coin
the two are the same test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tunewatch.core.config import RegressionConfig

# An outcome as the state file keeps it: example key -> (exact match, difficulty).
Outcomes = Mapping[str, tuple[bool, str] | list]


def mcnemar_p(broken: int, fixed: int) -> float:
    """Exact two-sided McNemar p-value of `broken` against `fixed` discordant pairs."""
    n = broken + fixed
    if n == 0:
        return 1.0
    observed = math.comb(n, broken)
    likelier_not = sum(math.comb(n, i) for i in range(n + 1) if math.comb(n, i) <= observed)
    return min(1.0, likelier_not / 2**n)


@dataclass(frozen=True)
class Pairs:
    """Paired counts of a checkpoint (now) against a baseline, with what follows from them."""

    examples: int
    fixed: int
    broken: int

    @property
    def drop(self) -> float:
        """Exact match lost: baseline minus now, over the paired examples."""
        return (self.broken - self.fixed) / self.examples

    @property
    def p_value(self) -> float:
        return mcnemar_p(self.broken, self.fixed)

    def is_drop(self, min_drop: float, max_p: float) -> bool:
        return self.drop >= min_drop - 1e-12 and self.p_value < max_p


def pairs(now: Outcomes, before: Outcomes, difficulty: str | None = None) -> Pairs:
    """Paired counts on the examples both have (of one difficulty, or all)."""
    keys = [k for k in sorted(set(now) & set(before))
            if difficulty is None or now[k][1] == difficulty]
    fixed = sum(1 for k in keys if now[k][0] and not before[k][0])
    broken = sum(1 for k in keys if before[k][0] and not now[k][0])
    return Pairs(len(keys), fixed, broken)


def is_regression(now: Outcomes, before: Outcomes, rules: RegressionConfig) -> bool:
    """DESIGN section 9: a drop past the overall threshold, or past the per-difficulty one
    within a difficulty, with an exact McNemar p below the level."""
    if pairs(now, before).is_drop(rules.min_drop_overall, rules.max_p_value):
        return True
    return any(pairs(now, before, d).is_drop(rules.min_drop_per_difficulty, rules.max_p_value)
               for d in {v[1] for v in now.values()})
