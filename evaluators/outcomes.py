"""Per-example outcomes -> the figures of one evaluation, overall and per label value.

Why a separate module: `ExampleOutcome` is what the evaluation learns about one example (the
unit of every paired test and of the recorded predictions), and the same aggregation turns
outcomes into figures for the whole suite and every breakdown (difficulty, regime, source,
pattern, length bucket, pattern x length bucket); the daemon reuses it for subsets. A group
always has at least one example; nothing here invents a value for an empty group (an absent
key is the honest answer).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from evaluators.scoring import FAILURE_MODES
from evaluators.stats import Calibration, Rate, calibration, wilson_interval

# The breakdowns every figure is given for (label names from DESIGN section 9).
BREAKDOWNS = ("difficulty", "regime", "source", "pattern", "length_bucket", "pattern_length")
# The pattern every pattern beyond evaluator.max_patterns is published as.
OTHER_PATTERN = "other"


@dataclass(frozen=True)
class ExampleOutcome:
    """Everything the evaluation learnt about one example (kept for paired tests).

    key: content hash of prompt and golden (stable across checkpoints and files);
    cross_entropy: this example's mean NLL per golden token (nats); nll: the sum (both None
    when the backend cannot teacher-force); confidence: geometric mean probability of the
    answer tokens, None without any (or without log-probabilities from the backend).
    """

    key: str
    id: str
    origin: str
    difficulty: str
    regime: str
    source: str
    pattern: str
    length_bucket: str
    prompt_tokens: int
    golden_tokens: int
    generated_tokens: int
    golden: str
    generated: str
    answer: str
    exact_match: bool
    normalized_match: bool
    failure_mode: str | None
    contract_ok: bool | None
    think_blocks: int
    truncated: bool
    confidence: float | None
    nll: float | None
    cross_entropy: float | None

    @property
    def pattern_length(self) -> str:
        return f"{self.pattern}|{self.length_bucket}"


@dataclass(frozen=True)
class GroupStats:
    """The figures of one group of examples."""

    examples: int
    exact_match: Rate
    normalized_match: Rate
    contract: Rate | None
    failure_modes: dict[str, int]
    truncated: int
    with_think: int
    cross_entropy: float | None
    golden_tokens: int
    mean_confidence: float | None
    calibration: Calibration | None
    mean_generated_tokens: float
    composite_score: float | None = None
    composite_parts: dict[str, float] = field(default_factory=dict)


def length_bucket(tokens: int, edges: Sequence[int]) -> str:
    """`0-50`, `50-100`, `100-200`, `200+` for the default edges [0, 50, 100, 200]."""
    for low, high in itertools.pairwise(edges):
        if tokens < high:
            return f"{low}-{high}"
    return f"{edges[-1]}+"


def composite(
    stats: GroupStats, weights: dict[str, float]
) -> tuple[float | None, dict[str, float]]:
    """Weighted mean of the parts that exist (DESIGN section 9), and the parts themselves.

    Parts: exact_match, likelihood = exp(-cross-entropy), calibration = 1 - ECE, contract =
    contract pass rate. A part that does not exist for this suite (no contract configured, no
    confidence) is left out and the remaining weights are renormalised, rather than scored 0.
    """
    parts: dict[str, float] = {"exact_match": stats.exact_match.value}
    if stats.cross_entropy is not None:
        parts["likelihood"] = math.exp(-stats.cross_entropy)
    if stats.calibration is not None:
        parts["calibration"] = 1.0 - stats.calibration.ece
    if stats.contract is not None:
        parts["contract"] = stats.contract.value
    used = {k: w for k, w in weights.items() if k in parts and w > 0}
    total = sum(used.values())
    if total <= 0:
        return None, parts
    return sum(parts[k] * w for k, w in used.items()) / total, parts


def _cross_entropy(outcomes: Sequence[ExampleOutcome], tokens: int) -> float | None:
    """Summed NLL over summed golden tokens; None unless every example was teacher-forced."""
    nlls = [o.nll for o in outcomes if o.nll is not None]
    if len(nlls) != len(outcomes) or tokens < 1:
        return None
    return sum(nlls) / tokens


def group_stats(
    outcomes: Sequence[ExampleOutcome],
    *,
    bins: Sequence[float],
    confidence_level: float,
    weights: dict[str, float],
) -> GroupStats:
    """The figures of a non-empty group of outcomes."""
    if not outcomes:
        raise ValueError("a group needs at least one example")
    n = len(outcomes)
    contracted = [o for o in outcomes if o.contract_ok is not None]
    confident = [o for o in outcomes if o.confidence is not None]
    tokens = sum(o.golden_tokens for o in outcomes)
    modes = {mode: 0 for mode in FAILURE_MODES}
    for o in outcomes:
        if o.failure_mode is not None:
            modes[o.failure_mode] += 1
    stats = GroupStats(
        examples=n,
        exact_match=wilson_interval(sum(o.exact_match for o in outcomes), n, confidence_level),
        normalized_match=wilson_interval(
            sum(o.normalized_match for o in outcomes), n, confidence_level
        ),
        contract=wilson_interval(
            sum(bool(o.contract_ok) for o in contracted), len(contracted), confidence_level
        ) if contracted else None,
        failure_modes=modes,
        truncated=sum(o.truncated for o in outcomes),
        with_think=sum(o.think_blocks > 0 for o in outcomes),
        cross_entropy=_cross_entropy(outcomes, tokens),
        golden_tokens=tokens,
        mean_confidence=(
            sum(o.confidence for o in confident if o.confidence is not None) / len(confident)
            if confident else None
        ),
        calibration=calibration(
            [o.confidence for o in confident if o.confidence is not None],
            [o.exact_match for o in confident],
            bins,
        ),
        mean_generated_tokens=sum(o.generated_tokens for o in outcomes) / n,
    )
    score, parts = composite(stats, weights)
    return dataclasses.replace(stats, composite_score=score, composite_parts=parts)


def breakdown(
    outcomes: Sequence[ExampleOutcome],
    label: Callable[[ExampleOutcome], str],
    *,
    bins: Sequence[float],
    confidence_level: float,
    weights: dict[str, float],
) -> dict[str, GroupStats]:
    """GroupStats per value of `label`, values sorted."""
    groups: dict[str, list[ExampleOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault(label(outcome), []).append(outcome)
    return {
        value: group_stats(
            groups[value], bins=bins, confidence_level=confidence_level, weights=weights
        )
        for value in sorted(groups)
    }


def _field_label(name: str) -> Callable[[ExampleOutcome], str]:
    """The label of one BREAKDOWNS field; a closure per name, so each binds its own."""
    return lambda outcome: str(getattr(outcome, name))


def summarize(
    outcomes: Sequence[ExampleOutcome],
    *,
    bins: Sequence[float],
    confidence_level: float,
    weights: dict[str, float],
) -> tuple[GroupStats, dict[str, dict[str, GroupStats]]]:
    """Overall figures and every breakdown in BREAKDOWNS."""
    overall = group_stats(outcomes, bins=bins, confidence_level=confidence_level, weights=weights)
    groups = {
        name: breakdown(
            outcomes,
            _field_label(name),
            bins=bins,
            confidence_level=confidence_level,
            weights=weights,
        )
        for name in BREAKDOWNS
    }
    return overall, groups


def kept_patterns(outcomes: Sequence[ExampleOutcome], cap: int) -> frozenset[str]:
    """The `cap` most frequent patterns (ties: by name), the ones published by name.

    Why a cap: patterns derived from ids (evaluator.derive_labels) can be many, and each is
    a row of series per length bucket (DESIGN section 9 bounds this cross-product).
    """
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.pattern] = counts.get(o.pattern, 0) + 1
    ranked = sorted(counts, key=lambda p: (-counts[p], p))
    return frozenset(ranked[:cap])


def exact_match_counts(
    outcomes: Sequence[ExampleOutcome], key: Callable[[ExampleOutcome], tuple[str, ...]]
) -> dict[tuple[str, ...], tuple[int, int]]:
    """(exact matches, examples) per value of `key`, keys sorted; only non-empty groups."""
    counts: dict[tuple[str, ...], list[int]] = {}
    for o in outcomes:
        row = counts.setdefault(key(o), [0, 0])
        row[0] += int(o.exact_match)
        row[1] += 1
    return {k: (counts[k][0], counts[k][1]) for k in sorted(counts)}


def capped_pattern(pattern: str, kept: frozenset[str]) -> str:
    """The pattern as published: itself if kept, else OTHER_PATTERN."""
    return pattern if pattern in kept else OTHER_PATTERN
