"""The evaluation core: one load per checkpoint, one pass, every figure, loud failures.

Public API (what `tunewatch eval-once` and the evaluator daemon call):

    from evaluators import evaluate_checkpoint, EvalResult, EvaluationError, load_suite
    suite = load_suite(data_dir, cfg.evaluator.files)          # once per daemon start
    result = evaluate_checkpoint(path, cfg.evaluator, suite=suite)   # per checkpoint
    result.overall.exact_match.value, result.breakdowns["difficulty"]["easy"], ...
    result.outcomes  # per-example outcomes (key, exact_match, ...) for paired tests

`evaluators.stats` holds the Wilson interval, the exact McNemar test and calibration.
"""

from evaluators.data import Example, Suite, load_suite
from evaluators.errors import REASONS, EvaluationError
from evaluators.evaluate import (
    EvalResult,
    RunInfo,
    SuiteSummary,
    evaluate_checkpoint,
    evaluate_with_backend,
)
from evaluators.outcomes import ExampleOutcome, GroupStats

__all__ = [
    "REASONS",
    "EvalResult",
    "EvaluationError",
    "Example",
    "ExampleOutcome",
    "GroupStats",
    "RunInfo",
    "Suite",
    "SuiteSummary",
    "evaluate_checkpoint",
    "evaluate_with_backend",
    "load_suite",
]
