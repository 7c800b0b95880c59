"""What the recorded predictions cost in generation time, from the measured speed.

Why an estimate and not a measurement: the recorded examples are generated inside the
evaluation's batched pass, so no clock times them alone. Their share is their count over
the measured examples per second; per run, that times the checkpoints that will be
recorded (max_steps / save_steps, thinned by `predictions.frequency`). Printed by
`tunewatch predictions cost` and published as tunewatch_eval_predictions_cost_*_seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunewatch.config import PredictionsConfig


@dataclass(frozen=True)
class CostEstimate:
    """Seconds of generation for the recorded rows: one checkpoint, and a whole run."""

    rows_per_checkpoint: int
    checkpoints: int | None
    checkpoint_seconds: float
    run_seconds: float | None


def recorded_checkpoints(cfg: PredictionsConfig, max_steps: int | None,
                         save_steps: int | None, epochs: float | None = None) -> int | None:
    """How many checkpoints of a run are recorded; None when the run's shape is unknown."""
    if not cfg.enabled:
        return 0
    if not max_steps or not save_steps:
        return None
    steps = range(save_steps, max_steps + 1, save_steps)
    if cfg.frequency == "steps":
        return sum(1 for s in steps if s % cfg.every_n_steps == 0)
    if cfg.frequency == "epoch":
        return max(1, math.ceil(epochs)) if epochs else None
    return len(steps)


def estimate(cfg: PredictionsConfig, *, examples_per_second: float, suite_examples: int,
             failed_ratio: float = 0.0, max_steps: int | None = None,
             save_steps: int | None = None, epochs: float | None = None) -> CostEstimate:
    """The estimate for the configured sample (and failed rows at `failed_ratio`)."""
    if examples_per_second <= 0 or not math.isfinite(examples_per_second):
        raise ValueError("examples_per_second must be a positive number")
    rows = min(cfg.sample_size, suite_examples) if cfg.enabled else 0
    if cfg.enabled and cfg.record_failed:
        rows += min(cfg.max_failed, round(max(0, suite_examples - rows) * failed_ratio))
    per_checkpoint = rows / examples_per_second
    n = recorded_checkpoints(cfg, max_steps, save_steps, epochs)
    return CostEstimate(rows, n, per_checkpoint, None if n is None else per_checkpoint * n)
