"""The evaluator's Prometheus metric families: their table, the samples, the exposition.

Why a table of families: docs/metrics.md lists exactly what the daemon publishes, so every
family is declared once here (name, type, help) and always exposed, with samples where there
is something to say. A value that was not measured (no comparison yet, a failed checkpoint,
no contract configured) has no sample: never a 0 or an inf in its place. `add` is the one
way to put a sample in: it refuses an undeclared family and drops what is not a
measurement, so the parts that compute figures (evaluators/daemon/) cannot publish
around the table.

Overall figures are the series with `difficulty="all"`; the per-difficulty series use the
difficulty's name. Other breakdowns (regime, source, pattern, length bucket) are marginals,
each in its own family, so every family has one label set. The two cross-products DESIGN
section 9 allows have families of their own: exact match per pattern x length bucket (at
most `evaluator.max_patterns` patterns, the rest folded into `other`) and the calibration
bins per difficulty.

Example exposition (abridged):

    tunewatch_eval_checkpoint_step 300.0
    tunewatch_eval_exact_match_ratio{difficulty="all"} 0.42
    tunewatch_eval_exact_match_ratio{difficulty="easy"} 0.9
    tunewatch_eval_regression_p_value{baseline="previous"} 0.0039
    tunewatch_eval_ranking_composite_score{checkpoint="checkpoint-300",step="300"} 0.61
    tunewatch_eval_failures_total{reason="weights"} 1.0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric

# Breakdowns published as marginals, one family pair each (DESIGN section 9).
MARGINALS = ("regime", "source", "pattern", "length_bucket")

# name -> (type, labels, help). Counters without `_total` (client_python adds it).
FAMILIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "tunewatch_eval_checkpoint_step": (
        "gauge", (), "Training step of the checkpoint the measurements below describe."),
    "tunewatch_eval_examples": (
        "gauge", ("difficulty",), "Examples evaluated (difficulty=all: the whole suite)."),
    "tunewatch_eval_exact_match_ratio": (
        "gauge", ("difficulty",), "Exact match rate."),
    "tunewatch_eval_exact_match_low_ratio": (
        "gauge", ("difficulty",), "Lower bound of the exact match Wilson interval."),
    "tunewatch_eval_exact_match_high_ratio": (
        "gauge", ("difficulty",), "Upper bound of the exact match Wilson interval."),
    "tunewatch_eval_normalized_match_ratio": (
        "gauge", ("difficulty",), "Normalized match rate."),
    "tunewatch_eval_contract_pass_ratio": (
        "gauge", ("difficulty",), "Output contract pass rate (only with contracts)."),
    "tunewatch_eval_cross_entropy": (
        "gauge", ("difficulty",), "Teacher-forced cross-entropy of the golden answers, "
        "nats per token."),
    "tunewatch_eval_answer_confidence_ratio": (
        "gauge", ("difficulty",), "Mean answer confidence."),
    "tunewatch_eval_expected_calibration_error": (
        "gauge", ("difficulty",), "Expected calibration error of answer confidence."),
    "tunewatch_eval_brier_score": (
        "gauge", ("difficulty",), "Brier score of answer confidence against exact match."),
    "tunewatch_eval_composite_score": (
        "gauge", ("difficulty",), "Composite score (weighted parts, 0..1)."),
    "tunewatch_eval_failed_examples": (
        "gauge", ("difficulty", "failure_mode"), "Wrong answers by failure mode."),
    "tunewatch_eval_calibration_bin_examples": (
        "gauge", ("bin",), "Examples with an answer confidence in the bin."),
    "tunewatch_eval_calibration_bin_accuracy_ratio": (
        "gauge", ("bin",), "Exact match rate of the examples in the bin."),
    "tunewatch_eval_calibration_bin_confidence_ratio": (
        "gauge", ("bin",), "Mean answer confidence of the examples in the bin."),
    "tunewatch_eval_difficulty_calibration_bin_examples": (
        "gauge", ("difficulty", "bin"),
        "Examples of one difficulty with an answer confidence in the bin."),
    "tunewatch_eval_difficulty_calibration_bin_accuracy_ratio": (
        "gauge", ("difficulty", "bin"), "Exact match rate in the bin, within one difficulty."),
    "tunewatch_eval_difficulty_calibration_bin_confidence_ratio": (
        "gauge", ("difficulty", "bin"),
        "Mean answer confidence in the bin, within one difficulty."),
    "tunewatch_eval_think_tag_ratio": (
        "gauge", ("difficulty",), "Share of answers with a <think> block."),
    "tunewatch_eval_hard_examples": (
        "gauge", ("difficulty",),
        "Wrong answers of the checkpoint written to the hard-example files."),
    **{
        f"tunewatch_eval_{m}_exact_match_ratio": (
            "gauge", (m,), f"Exact match rate per {m.replace('_', ' ')}.")
        for m in MARGINALS
    },
    **{
        f"tunewatch_eval_{m}_examples": (
            "gauge", (m,), f"Examples evaluated per {m.replace('_', ' ')}.")
        for m in MARGINALS
    },
    "tunewatch_eval_pattern_length_exact_match_ratio": (
        "gauge", ("pattern", "length_bucket"),
        "Exact match rate per pattern x prompt-length bucket (capped patterns)."),
    "tunewatch_eval_pattern_length_examples": (
        "gauge", ("pattern", "length_bucket"),
        "Examples evaluated per pattern x prompt-length bucket (capped patterns)."),
    "tunewatch_eval_curriculum_mix_ratio": (
        "gauge", ("difficulty",), "Recommended share of the next data round per difficulty."),
    "tunewatch_eval_regression_p_value": (
        "gauge", ("baseline",), "Exact McNemar p-value against the baseline (paired)."),
    "tunewatch_eval_regression": (
        "gauge", ("baseline",), "1 if the drop against the baseline is a regression."),
    "tunewatch_eval_baseline_step": (
        "gauge", ("baseline",), "Step of the baseline checkpoint."),
    "tunewatch_eval_paired_examples": (
        "gauge", ("baseline",), "Examples evaluated on both checkpoints."),
    "tunewatch_eval_paired_fixed_examples": (
        "gauge", ("baseline",), "Paired examples wrong on the baseline and right now."),
    "tunewatch_eval_paired_broken_examples": (
        "gauge", ("baseline",), "Paired examples right on the baseline and wrong now."),
    "tunewatch_eval_exact_match_difference_ratio": (
        "gauge", ("baseline",), "Exact match now minus on the baseline (paired examples)."),
    "tunewatch_eval_exact_match_difference_low_ratio": (
        "gauge", ("baseline",), "Lower bound of the paired difference's interval."),
    "tunewatch_eval_exact_match_difference_high_ratio": (
        "gauge", ("baseline",), "Upper bound of the paired difference's interval."),
    "tunewatch_eval_difficulty_regression_p_value": (
        "gauge", ("baseline", "difficulty"), "Exact McNemar p-value within one difficulty."),
    "tunewatch_eval_difficulty_exact_match_difference_ratio": (
        "gauge", ("baseline", "difficulty"),
        "Paired exact match difference within one difficulty (now minus baseline)."),
    "tunewatch_eval_cross_entropy_change_ratio": (
        "gauge", ("baseline",), "Cross-entropy now over the baseline's, minus 1."),
    # The regression rule the evaluator applies (evaluator.regression), always published, so
    # that the alert rules compare with the same thresholds (prometheus/rules/eval.alerts.yml).
    "tunewatch_eval_regression_min_drop_ratio": (
        "gauge", (), "Smallest overall exact match drop that is a regression."),
    "tunewatch_eval_difficulty_regression_min_drop_ratio": (
        "gauge", (), "Smallest exact match drop within one difficulty that is a regression."),
    "tunewatch_eval_regression_max_p_value": (
        "gauge", (), "McNemar p-value a regression must be below."),
    "tunewatch_eval_regression_loss_rise_ratio": (
        "gauge", (), "Cross-entropy change ratio above which the loss regressed."),
    "tunewatch_eval_best_checkpoint_step": (
        "gauge", (), "Step of the best checkpoint (highest exact match; ties: later)."),
    "tunewatch_eval_ranking_position": (
        "gauge", ("checkpoint", "step"), "Rank among the last K checkpoints (1 = best)."),
    "tunewatch_eval_ranking_composite_score": (
        "gauge", ("checkpoint", "step"), "Composite score of one of the last K checkpoints."),
    "tunewatch_eval_ranking_exact_match_ratio": (
        "gauge", ("checkpoint", "step"), "Exact match of one of the last K checkpoints."),
    "tunewatch_eval_duration_seconds": (
        "gauge", (), "Wall time of the last successful evaluation, model load included."),
    "tunewatch_eval_examples_per_second": (
        "gauge", (), "Examples per second of the last successful evaluation pass."),
    "tunewatch_eval_tokens_per_second": (
        "gauge", (), "Generated tokens per second of the last successful evaluation pass."),
    "tunewatch_eval_discovery_delay_seconds": (
        "gauge", (), "From the last file write of the checkpoint to its evaluation start."),
    "tunewatch_eval_last_success_timestamp_seconds": (
        "gauge", (), "When the last successful evaluation finished (unix seconds)."),
    "tunewatch_eval_evaluations": (
        "counter", (), "Checkpoints evaluated successfully by this process."),
    "tunewatch_eval_examples_evaluated": (
        "counter", (), "Examples scored by successful evaluations of this process."),
    "tunewatch_eval_failures": (
        "counter", ("reason",), "Failed evaluation attempts by reason."),
    "tunewatch_eval_scans": (
        "counter", ("reason",), "Scans of the checkpoint directory by what started them."),
    "tunewatch_eval_backlog_checkpoints": (
        "gauge", (), "Complete checkpoints waiting to be evaluated (retries included)."),
    "tunewatch_eval_newest_checkpoint_step": (
        "gauge", (), "Step of the newest complete checkpoint on disk."),
    "tunewatch_eval_lag_steps": (
        "gauge", (), "Newest complete checkpoint step minus the last evaluated step."),
    "tunewatch_eval_run": (
        "info", ("run",), "The run this evaluator belongs to (TUNEWATCH_RUN)."),
    "tunewatch_eval_predictions_written": (
        "counter", (), "Prediction rows written to the predictions store (new rows)."),
    "tunewatch_eval_predictions_spooled": (
        "counter", (), "Prediction rows spooled locally because the store failed."),
    "tunewatch_eval_predictions_failed": (
        "counter", (), "Prediction rows lost: neither written nor spooled."),
    "tunewatch_eval_predictions_spool_rows": (
        "gauge", (), "Prediction rows waiting in the spool for the store."),
    "tunewatch_eval_predictions_cost_checkpoint_seconds": (
        "gauge", (), "Estimated generation time of the rows recorded per checkpoint."),
    "tunewatch_eval_predictions_cost_run_seconds": (
        "gauge", (), "Estimated generation time of the rows recorded over the whole run."),
    "tunewatch_eval_remote_jobs": (
        "counter", (), "Generation jobs the inference server completed (backend: remote)."),
    "tunewatch_eval_remote_job_wait_seconds": (
        "counter", (), "Seconds completed jobs waited from queueing to their result, summed."),
    "tunewatch_eval_remote_request_retries": (
        "counter", ("reason",),
        "Inference server requests retried (connection, server_error, rate_limited)."),
    "tunewatch_eval_remote_job_failures": (
        "counter", ("reason",), "Jobs without an answer (timeout, failed, bad_response)."),
    "tunewatch_eval_deployments": (
        "counter", (), "Deployments of the best checkpoint in the deployment history."),
    "tunewatch_eval_deployment_rollbacks": (
        "counter", (), "Rollbacks in the deployment history (tunewatch deploy rollback)."),
    "tunewatch_eval_deployed_checkpoint_step": (
        "gauge", (), "Step of the checkpoint deployed to the inference server."),
    "tunewatch_eval_deployment_failures": (
        "counter", ("reason",), "Failed deployments (remote, checkpoint_missing)."),
}

# Family name -> its samples (labels, value); built by `add`, rendered by `families`.
Samples = dict[str, list[tuple[dict[str, str], float]]]


def add(out: Samples, name: str, labels: dict[str, str], value: float | None) -> None:
    """Add a sample; None and non-finite values are not measurements and are dropped."""
    if name not in FAMILIES:
        raise KeyError(f"undeclared metric family {name}")
    if value is None or not math.isfinite(value):
        return
    out.setdefault(name, []).append((labels, float(value)))


def add_each(out: Samples, name: str, label: str, values: Mapping[str, float | None]) -> None:
    """One sample per key of `values` (a count per reason, ...), the key as label `label`."""
    for key, value in values.items():
        add(out, name, {label: key}, value)


def to_jsonable(samples: Samples) -> dict[str, Any]:
    """Samples as JSON (the state file keeps the published measurement)."""
    return {name: [[labels, value] for labels, value in rows] for name, rows in samples.items()}


def from_jsonable(data: dict[str, Any]) -> Samples:
    """Samples from the state file; a family no longer declared is left out."""
    return {
        name: [(dict(labels), float(value)) for labels, value in rows]
        for name, rows in data.items() if name in FAMILIES
    }


def families(samples: Samples) -> Iterator[Metric]:
    """Every declared family, in declaration order, with the samples known for it."""
    for name, (kind, labels, text) in FAMILIES.items():
        rows = samples.get(name, [])
        family: Metric
        if kind == "counter":
            family = CounterMetricFamily(name, text, labels=labels)
        elif kind == "info":
            family = InfoMetricFamily(name, text, labels=())
            for row_labels, _value in rows:
                family.add_metric([], row_labels)
            yield family
            continue
        else:
            family = GaugeMetricFamily(name, text, labels=labels)
        for row_labels, value in rows:
            family.add_metric([row_labels.get(k, "") for k in labels], value)
        yield family
