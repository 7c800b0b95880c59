"""Paired comparison of two checkpoints on the same examples, and the regression decision.

Why paired: on 50 examples a 2-point drop in exact match is noise, and two independent
intervals overlap too much to tell. Comparing the same examples, only the discordant pairs
carry information: `fixed` (wrong before, right now) and `broken` (right before, wrong now).
The exact McNemar test on them says how likely such a split is with no real change.

- difference: EM(now) - EM(baseline) on the paired examples, with Newcombe's square-and-add
  interval for a paired difference (evaluators/stats.py: good coverage at small counts, and
  a real width when no pair is discordant, where the Wald interval collapses to a point).
- regression (DESIGN section 9): a drop of at least `min_drop_overall` overall (or
  `min_drop_per_difficulty` in one difficulty) whose McNemar p-value on those paired
  examples is below `max_p_value`.

The ranking of the last K checkpoints is evaluators/ranking.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from evaluators.outcomes import ExampleOutcome
from evaluators.stats import PairedTable, mcnemar_exact_p, paired_difference_interval
from tunewatch.core.config import RegressionConfig

# An outcome as kept in the state file: example key -> (exact match, difficulty).
Outcomes = Mapping[str, tuple[bool, str]]


def outcomes_of(outcomes: Iterable[ExampleOutcome]) -> dict[str, tuple[bool, str]]:
    """An evaluation's outcomes in the form comparisons (and the state file) keep them."""
    return {o.key: (o.exact_match, o.difficulty) for o in outcomes}


def concordant(now: Outcomes, before: Outcomes) -> tuple[int, int]:
    """Pairs both right and both wrong: McNemar ignores them, but a reader wants to see them."""
    keys = set(now) & set(before)
    right = sum(1 for k in keys if now[k][0] and before[k][0])
    wrong = sum(1 for k in keys if not now[k][0] and not before[k][0])
    return right, wrong


@dataclass(frozen=True)
class Paired:
    """Paired counts and tests between a checkpoint and a baseline."""

    examples: int
    fixed: int
    broken: int
    p_value: float
    difference: float
    difference_low: float
    difference_high: float


@dataclass(frozen=True)
class Comparison:
    """A checkpoint against one baseline (previous or best)."""

    baseline: str
    baseline_step: int
    overall: Paired
    per_difficulty: dict[str, Paired] = field(default_factory=dict)
    regression: bool = False


def paired(now: Sequence[bool], before: Sequence[bool], confidence_level: float = 0.95) -> Paired:
    """Paired statistics of two equally long outcome lists (same examples, same order)."""
    if len(now) != len(before):
        raise ValueError("paired outcomes differ in length")
    n = len(now)
    if n < 1:
        raise ValueError("a paired comparison needs at least one example")
    pairs = list(zip(now, before, strict=True))
    fixed = sum(1 for a, b in pairs if a and not b)
    broken = sum(1 for a, b in pairs if b and not a)
    both = sum(1 for a, b in pairs if a and b)
    table = PairedTable(both=both, fixed=fixed, broken=broken,
                        neither=n - both - fixed - broken)
    low, high = paired_difference_interval(table, confidence_level)
    return Paired(
        examples=n, fixed=fixed, broken=broken, p_value=mcnemar_exact_p(broken, fixed),
        difference=(fixed - broken) / n, difference_low=low, difference_high=high,
    )


def _is_drop(p: Paired, min_drop: float, max_p: float) -> bool:
    # The tiny epsilon keeps an exact 5-point drop a drop despite float rounding.
    return -p.difference >= min_drop - 1e-12 and p.p_value < max_p


def compare(
    now: Outcomes,
    before: Outcomes,
    *,
    baseline: str,
    baseline_step: int,
    rules: RegressionConfig,
    confidence_level: float = 0.95,
) -> Comparison | None:
    """Compare on the examples both have; None when they share none."""
    keys = sorted(set(now) & set(before))
    if not keys:
        return None
    overall = paired([now[k][0] for k in keys], [before[k][0] for k in keys], confidence_level)
    by_difficulty: dict[str, list[str]] = {}
    for k in keys:
        by_difficulty.setdefault(now[k][1], []).append(k)
    per = {
        d: paired([now[k][0] for k in ks], [before[k][0] for k in ks], confidence_level)
        for d, ks in sorted(by_difficulty.items())
    }
    regression = _is_drop(overall, rules.min_drop_overall, rules.max_p_value) or any(
        _is_drop(p, rules.min_drop_per_difficulty, rules.max_p_value) for p in per.values()
    )
    return Comparison(baseline, baseline_step, overall, per, regression)
