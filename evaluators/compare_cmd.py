"""`tunewatch compare CHECKPOINT_A CHECKPOINT_B --data DIR`: are two checkpoints different?

Why: the seeds' compare_checkpoints printed two accuracies side by side, which cannot tell a
real change from noise on a 150-example suite. This evaluates both checkpoints on the same
examples and prints the paired table (both right, fixed, broken, both wrong) overall and per
difficulty, the exact McNemar p-value, the difference in exact match with its confidence
interval, and whether B is a regression from A by the rule the alerts use (DESIGN section 9).
Exit status: 0 compared, 1 a checkpoint could not be evaluated, 2 a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from evaluators.compare import Comparison, Paired, compare
from evaluators.data import load_suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import EvalResult, evaluate_checkpoint
from evaluators.remote.backend import (
    RemoteEvaluator,
    add_backend_arguments,
    with_backend_arguments,
)
from tunewatch.cli import UsageError
from tunewatch.config import Config, EvaluatorConfig

log = logging.getLogger("tunewatch.compare")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint_a", help="the baseline checkpoint (e.g. the earlier one)")
    parser.add_argument("checkpoint_b", help="the checkpoint compared with it")
    parser.add_argument("--data", default=None,
                        help="validation suite directory (default: evaluator.data)")
    parser.add_argument("--limit", type=int, default=None,
                        help="compare on a quick subset of N examples")
    parser.add_argument("--device", default=None, help="override evaluator.device")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    add_backend_arguments(parser)


def outcomes(result: EvalResult) -> dict[str, tuple[bool, str]]:
    return {o.key: (o.exact_match, o.difficulty) for o in result.outcomes}


def both_right_wrong(a: EvalResult, b: EvalResult) -> tuple[int, int]:
    """Concordant pairs, which McNemar ignores but a reader wants to see."""
    oa, ob = outcomes(a), outcomes(b)
    keys = set(oa) & set(ob)
    right = sum(1 for k in keys if oa[k][0] and ob[k][0])
    wrong = sum(1 for k in keys if not oa[k][0] and not ob[k][0])
    return right, wrong


def _row(label: str, p: Paired) -> str:
    return (f"{label:<10} {p.examples:>5} {p.fixed:>6} {p.broken:>7} "
            f"{p.difference * 100:>+7.1f} [{p.difference_low * 100:+.1f}, "
            f"{p.difference_high * 100:+.1f}]  {p.p_value:.4g}")


def to_text(a: EvalResult, b: EvalResult, comp: Comparison) -> str:
    right, wrong = both_right_wrong(a, b)
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
    right, wrong = both_right_wrong(a, b)
    data: dict[str, Any] = {
        "a": a.checkpoint, "b": b.checkpoint, "both_right": right, "both_wrong": wrong,
        "overall": dataclasses.asdict(comp.overall),
        "per_difficulty": {d: dataclasses.asdict(p) for d, p in comp.per_difficulty.items()},
        "regression": comp.regression,
    }
    return json.dumps(data, indent=2)


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    ev: EvaluatorConfig = with_backend_arguments(dataclasses.replace(
        cfg.evaluator, **{k: v for k, v in (("data", args.data), ("device", args.device))
                          if v is not None}), args)
    try:
        # Through the inference server, each checkpoint must be the served one in turn:
        # remote.activate switches it (otherwise the second is refused as the wrong model).
        evaluate = (RemoteEvaluator(ev, cfg.run) if ev.backend == "remote"
                    else evaluate_checkpoint)
        suite = load_suite(Path(ev.data), ev.files)
        a = evaluate(args.checkpoint_a, ev, suite=suite, limit=args.limit)
        b = evaluate(args.checkpoint_b, ev, suite=suite, limit=args.limit)
    except EvaluationError as exc:
        log.error("cannot compare: %s [reason=%s]", exc, exc.reason)
        return 1
    comp = compare(outcomes(b), outcomes(a), baseline="a", baseline_step=a.step or 0,
                   rules=ev.regression, confidence_level=ev.confidence_level)
    if comp is None:
        log.error("the two evaluations share no example; nothing to compare")
        return 1
    sys.stdout.write(to_json(a, b, comp) + "\n" if args.json else to_text(a, b, comp))
    return 0
