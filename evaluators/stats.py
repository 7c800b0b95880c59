"""Statistics the evaluator computes from per-example outcomes.

Why here and not in PromQL: rates over 50 examples are noisy, and telling a real drop from
noise needs the per-example data (DESIGN section 3). Everything is pure Python so the daemon,
the benchmark and the tests share one definition:

- `wilson_interval`: the score interval for a binomial rate; unlike the normal approximation
  it stays inside [0, 1] and is sensible at 0/50 or 50/50.
- `mcnemar_exact_p`: the exact two-sided McNemar test on paired outcomes (same examples, two
  checkpoints), i.e. a two-sided binomial test of the discordant pairs b, c against p = 1/2.
- `paired_difference_interval`: Newcombe's square-and-add interval (his method 10) for the
  difference of two paired rates; unlike the Wald interval it keeps its width with no
  discordant pairs and its coverage at small counts.
- `calibration`: answer confidence against correctness in fixed bins, with ECE and Brier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson interval; only built when there is at least one trial."""

    successes: int
    total: int
    value: float
    low: float
    high: float


def z_for(confidence_level: float) -> float:
    """Two-sided standard normal quantile, e.g. 0.95 -> 1.95996..."""
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {confidence_level}")
    return NormalDist().inv_cdf(0.5 + confidence_level / 2.0)


def wilson_interval(successes: int, total: int, confidence_level: float = 0.95) -> Rate:
    """The rate successes/total with its Wilson score interval.

    Raises ValueError for total < 1: a rate over nothing is not a measurement, and returning
    0 there is exactly the silent default the seeds' evaluators published for days.
    """
    if total < 1:
        raise ValueError("a rate needs at least one trial")
    if not 0 <= successes <= total:
        raise ValueError(f"successes {successes} outside 0..{total}")
    z = z_for(confidence_level)
    p = successes / total
    z2n = z * z / total
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p * (1.0 - p) / total + z2n / (4.0 * total)) / (1.0 + z2n)
    # At 0 and n successes the bound is exactly 0 or 1; rounding would leave 1e-17 there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return Rate(successes, total, p, low, high)


@dataclass(frozen=True)
class PairedTable:
    """Outcomes of the same examples under two conditions ("now" against "before")."""

    both: int      # right in both
    fixed: int     # right now, wrong before
    broken: int    # wrong now, right before
    neither: int   # wrong in both

    @property
    def total(self) -> int:
        return self.both + self.fixed + self.broken + self.neither


def _paired_correlation(t: PairedTable) -> float:
    """Newcombe's estimate of the correlation of the two paired rates.

    The numerator both*neither - fixed*broken is shrunk towards 0 by n/2 when positive (0
    inside [0, n/2]); with an empty margin the correlation is taken as 0 (Newcombe 1998,
    method 10; as in Fagerland, Lydersen and Laake 2017, section 8.5).
    """
    n = t.total
    margins = ((t.both + t.fixed) * (t.broken + t.neither)
               * (t.both + t.broken) * (t.fixed + t.neither))
    if margins == 0:
        return 0.0
    cross = t.both * t.neither - t.fixed * t.broken
    if cross > n / 2.0:
        numerator = cross - n / 2.0
    elif cross >= 0:
        numerator = 0.0
    else:
        numerator = float(cross)
    return numerator / math.sqrt(margins)


def paired_difference_interval(table: PairedTable,
                               confidence_level: float = 0.95) -> tuple[float, float]:
    """Confidence interval of rate(now) - rate(before) on paired examples.

    Newcombe's square-and-add method (R. G. Newcombe, Stat Med 1998;17:2635-2650, method
    10): each rate's Wilson interval, combined with the estimated correlation of the two
    rates. Why not Wald: Wald has zero width when no pair is discordant (a checkpoint equal
    to its baseline on 50 examples would claim a difference of exactly 0) and covers
    poorly at small counts.
    """
    n = table.total
    if n < 1:
        raise ValueError("a paired comparison needs at least one example")
    now = wilson_interval(table.both + table.fixed, n, confidence_level)
    before = wilson_interval(table.both + table.broken, n, confidence_level)
    phi = _paired_correlation(table)
    diff = now.value - before.value
    down_now, up_now = now.value - now.low, now.high - now.value
    down_before, up_before = before.value - before.low, before.high - before.value
    low_sq = down_now ** 2 + up_before ** 2 - 2.0 * phi * down_now * up_before
    high_sq = up_now ** 2 + down_before ** 2 - 2.0 * phi * up_now * down_before
    low = diff - math.sqrt(max(0.0, low_sq))
    high = diff + math.sqrt(max(0.0, high_sq))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant pair counts.

    b: examples right before and wrong now; c: wrong before and right now. Under no change
    each discordant pair is a fair coin, so p = P(|X - n/2| >= |b - n/2|) for X ~ Bin(b+c, 1/2),
    computed as twice the smaller tail (capped at 1). b = 6, c = 0 gives 2/64 = 0.03125.
    """
    if b < 0 or c < 0:
        raise ValueError("pair counts cannot be negative")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class CalibrationBin:
    """One confidence bin [low, high) (the last bin includes 1.0)."""

    low: float
    high: float
    count: int
    accuracy: float | None
    mean_confidence: float | None


@dataclass(frozen=True)
class Calibration:
    """Reliability table, ECE and Brier score over the examples that have a confidence."""

    count: int
    ece: float
    brier: float
    bins: list[CalibrationBin] = field(default_factory=list)


def bin_index(confidence: float, edges: Sequence[float]) -> int:
    """Index of the bin holding confidence; edges rise from 0.0 to 1.0, last bin closed."""
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence {confidence} outside [0, 1]")
    for i in range(len(edges) - 1):
        if confidence < edges[i + 1]:
            return i
    return len(edges) - 2


def calibration(
    confidences: Sequence[float], correct: Sequence[bool], edges: Sequence[float]
) -> Calibration | None:
    """Calibration of confidences against correctness; None when there is nothing to bin.

    ECE is the count-weighted mean of |accuracy - mean confidence| over the non-empty bins;
    Brier is the mean of (confidence - correct)^2 (DESIGN section 9).
    """
    if len(confidences) != len(correct):
        raise ValueError("confidences and correct differ in length")
    if not confidences:
        return None
    groups: list[list[tuple[float, bool]]] = [[] for _ in range(len(edges) - 1)]
    for conf, ok in zip(confidences, correct, strict=True):
        groups[bin_index(conf, edges)].append((conf, ok))
    total = len(confidences)
    bins: list[CalibrationBin] = []
    ece = 0.0
    for i, members in enumerate(groups):
        if not members:
            bins.append(CalibrationBin(edges[i], edges[i + 1], 0, None, None))
            continue
        acc = sum(ok for _c, ok in members) / len(members)
        mean_conf = sum(c for c, _ok in members) / len(members)
        ece += len(members) / total * abs(acc - mean_conf)
        bins.append(CalibrationBin(edges[i], edges[i + 1], len(members), acc, mean_conf))
    brier = sum((c - float(ok)) ** 2 for c, ok in zip(confidences, correct, strict=True)) / total
    return Calibration(count=total, ece=ece, brier=brier, bins=bins)
