"""What the recorded predictions cost in generation time, from the measured speed.

Why an estimate and not a measurement: the recorded examples are generated inside the
evaluation's batched pass, so no clock times them alone. Their share is their count over
the measured examples per second; per run, that times the checkpoints that will be
recorded (max_steps / save_steps, thinned by `predictions.frequency`). Printed by
`tunewatch predictions cost` (`cost_text`, from the speed the evaluator last measured:
`measured_speed`) and published as tunewatch_eval_predictions_cost_*_seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from evaluators.state import FILE_NAME
from tunewatch.core.config import PredictionsConfig


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


def measured_speed(state_dir: str | Path) -> tuple[float | None, int | None]:
    """Examples per second and suite size from the evaluator's last published state
    (None for either when no evaluation has published it yet)."""
    path = Path(state_dir) / FILE_NAME
    try:
        published = json.loads(path.read_text(encoding="utf-8")).get("published", {})
    except (OSError, ValueError, AttributeError):
        return None, None

    def first(name: str, labels: dict[str, str]) -> float | None:
        for row_labels, value in published.get(name, []):
            if row_labels == labels:
                return float(value)
        return None
    examples = first("tunewatch_eval_examples", {"difficulty": "all"})
    return (first("tunewatch_eval_examples_per_second", {}),
            int(examples) if examples is not None else None)


def cost_text(cfg: PredictionsConfig, examples_per_second: float, examples: int,
              max_steps: int | None, save_steps: int | None) -> str:
    """The estimate for a person: per checkpoint, and per run where its shape is known."""
    est = estimate(cfg, examples_per_second=examples_per_second, suite_examples=examples,
                   failed_ratio=0.5, max_steps=max_steps, save_steps=save_steps)
    lines = [f"{est.rows_per_checkpoint} row(s) per checkpoint at {examples_per_second:.3g} "
             f"examples/s: {est.checkpoint_seconds:.2f}s of generation per checkpoint"]
    if est.run_seconds is not None:
        lines.append(f"{est.checkpoints} recorded checkpoint(s) per run: "
                     f"{est.run_seconds:.1f}s per run")
    if cfg.record_failed:
        lines.append("(failed examples estimated at a 50% error rate)")
    return "\n".join(lines) + "\n"
