"""Rendering a paired comparison of two evaluations: a table for a person, or JSON.

Why a module next to report.py: `tunewatch compare` prints what evaluators/compare.py
computed (both right, fixed, broken, both wrong; the exact McNemar p-value; the exact-match
difference with its interval, overall and per difficulty; the regression verdict), and the
text and the JSON must say the same thing. A is the baseline, B the checkpoint compared.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from evaluators.compare import Comparison, Paired, concordant, outcomes_of
from evaluators.evaluate import EvalResult


def _row(label: str, p: Paired) -> str:
    return (f"{label:<10} {p.examples:>5} {p.fixed:>6} {p.broken:>7} "
            f"{p.difference * 100:>+7.1f} [{p.difference_low * 100:+.1f}, "
            f"{p.difference_high * 100:+.1f}]  {p.p_value:.4g}")


def to_text(a: EvalResult, b: EvalResult, comp: Comparison) -> str:
    """The paired table of B against A, and the verdict."""
    right, wrong = concordant(outcomes_of(a.outcomes), outcomes_of(b.outcomes))
    lines = [
        f"A: {a.checkpoint} (exact match {a.overall.exact_match.value * 100:.1f}%)",
        f"B: {b.checkpoint} (exact match {b.overall.exact_match.value * 100:.1f}%)",
        f"paired examples {comp.overall.examples}: both right {right}, both wrong {wrong}, "
        f"fixed by B {comp.overall.fixed}, broken by B {comp.overall.broken}",
        "",
        f"{'':<10} {'pairs':>5} {'fixed':>6} {'broken':>7} {'EM diff (pts, CI)':>24}  "
        "McNemar p",
        _row("overall", comp.overall),
        *(_row(d, p) for d, p in comp.per_difficulty.items()),
        "",
        "B is a REGRESSION from A (a drop past the threshold with p below the level)"
        if comp.regression else "B is not a regression from A",
    ]
    return "\n".join(lines) + "\n"


def to_json(a: EvalResult, b: EvalResult, comp: Comparison) -> str:
    """The same comparison as a JSON object (checkpoints, counts, tests, verdict)."""
    right, wrong = concordant(outcomes_of(a.outcomes), outcomes_of(b.outcomes))
    data: dict[str, Any] = {
        "a": a.checkpoint, "b": b.checkpoint, "both_right": right, "both_wrong": wrong,
        "overall": dataclasses.asdict(comp.overall),
        "per_difficulty": {d: dataclasses.asdict(p) for d, p in comp.per_difficulty.items()},
        "regression": comp.regression,
    }
    return json.dumps(data, indent=2)
