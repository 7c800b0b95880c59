"""The daemon's hookup to the predictions recorder (docs/predictions.md).

Why a part of its own: recording is best effort. After a successful evaluation the sample
predictions are handed to the Recorder (evaluators/predictions/recorder.py), which queues
them for its own thread; whatever goes wrong is logged here and never fails the
evaluation. The recorder's counters are published with the evaluator's figures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from evaluators.data import Example
from evaluators.evaluate import EvalResult
from evaluators.families import Samples, add
from evaluators.predictions.recorder import Recorder

log = logging.getLogger("tunewatch.evaluate")

# Recorder.samples() key -> family.
FAMILIES = {
    "written": "tunewatch_eval_predictions_written",
    "spooled": "tunewatch_eval_predictions_spooled",
    "failed": "tunewatch_eval_predictions_failed",
    "pending": "tunewatch_eval_predictions_spool_rows",
    "cost_checkpoint": "tunewatch_eval_predictions_cost_checkpoint_seconds",
    "cost_run": "tunewatch_eval_predictions_cost_run_seconds",
}


def record(recorder: Recorder, *, step: int, checkpoint: Path, result: EvalResult,
           examples: Sequence[Example]) -> None:
    """Queue the sample predictions of one evaluation; never raises."""
    try:
        recorder.record(step=step, checkpoint=checkpoint, result=result, examples=examples)
    except Exception:  # recording is best effort; the evaluation has succeeded
        log.exception("recording the predictions of %s failed", checkpoint.name)


def samples(out: Samples, recorder: Recorder) -> None:
    """Rows written, spooled, failed, pending, and their estimated cost."""
    for key, value in recorder.samples().items():
        add(out, FAMILIES[key], {}, value)
