"""Evaluation dashboard: the evaluator's figures across checkpoints.

Why it joins on run_info: the evaluator's measurement series carry no `run` label (one
evaluator serves one run, DESIGN section 9); `tunewatch_eval_run_info{run}` names it, so
every query keeps only the evaluators of the chosen run with `and on (job, instance)`.
Breakdowns are the evaluator's marginals (regime, source, pattern, length bucket) over
every evaluated example, plus the two cross-products DESIGN section 9 allows: the seeds'
pattern x length heatmap (a colour-coded matrix whose cells open the Predictions dashboard
on that pattern and length bucket) and the reliability diagram per difficulty (repeated
over the `difficulty` variable).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from .common import (
    Layout,
    bar_chart,
    bar_gauge,
    dashboard_url,
    datasource_variable,
    heatmap_panel,
    matrix_table,
    new_dashboard,
    query_variable,
    runbook_link,
    stat_panel,
    table_panel,
    target,
    thresholds,
    to_dashboard,
    ts,
)

RUN = ' and on (job, instance) tunewatch_eval_run_info{run="$run"}'
EVAL_HOSTS = 'group by (host) (tunewatch_eval_run_info{run="$run"})'
TABLE_HIDDEN = ["Time", "__name__", "job", "instance", "host", "role"]
ALL = 'difficulty="all"'  # the whole suite's series
# seed 001's heatmap colours: red below 60%, yellow to 80%, green above.
SEED_HEATMAP = thresholds(0.8, 0.6, higher_is_worse=False)
EXACT = thresholds(0.5, 0.2, higher_is_worse=False)
# A Predictions link from a pattern x length cell: the row's pattern, the column's bucket.
PREDICTIONS_CELL = dashboard_url("predictions", pattern="${__data.fields[0]}",
                                 length_bucket="${__field.name}")


def of_run(expr: str) -> str:
    """The expression restricted to the evaluators of the chosen run."""
    return f"({expr}){RUN}"


def build() -> db.Dashboard:
    """The Evaluation dashboard."""
    d = new_dashboard("evaluation", "tunewatch / Evaluation",
                      "Evaluation of every checkpoint of a run: exact match, cross-entropy, "
                      "calibration, regressions, ranking, breakdowns, throughput.")
    d.with_variable(datasource_variable())
    d.with_variable(query_variable("run", "Run", "label_values(tunewatch_eval_run_info, run)"))
    d.with_variable(query_variable(
        "difficulty", "Difficulty",
        "label_values(tunewatch_eval_difficulty_calibration_bin_examples, difficulty)",
        multi=True, include_all=True))
    lay = Layout(d)
    regression_map = dm.ValueMap(options={
        "0": dm.ValueMappingResult(text="OK", color="green", index=0),
        "1": dm.ValueMappingResult(text="REGRESSION", color="red", index=1)})

    lay.row("Latest checkpoint")
    lay.add(stat_panel("Evaluated step", "Step of the checkpoint the figures below describe "
                       "(the latest evaluated).", "none",
                       [target(of_run("tunewatch_eval_checkpoint_step"), "step", instant=True)],
                       thresholds(1e12, 1e13), light=False), 4, 4)
    lay.add(stat_panel("Best step", "Step of the best checkpoint so far (highest exact "
                       "match; ties: the later step).", "none",
                       [target(of_run("tunewatch_eval_best_checkpoint_step"), "best",
                               instant=True)],
                       thresholds(1e12, 1e13), light=False), 4, 4)
    lay.add(stat_panel("Regression", "1 if the latest checkpoint regressed against the "
                       "baseline (a drop of enough points with McNemar p below the level).",
                       "none",
                       [target(of_run("tunewatch_eval_regression"), "{{baseline}}",
                               instant=True)],
                       thresholds(0.5, 1), [runbook_link("evalregression")],
                       mappings=[regression_map]), 4, 4)
    lay.add(stat_panel("Regression p-value", "Exact two-sided McNemar p-value of the paired "
                       "outcomes against each baseline; small means the change is real.",
                       "none",
                       [target(of_run("tunewatch_eval_regression_p_value"), "{{baseline}}",
                               instant=True)],
                       thresholds(0.2, 0.05, higher_is_worse=False),
                       [runbook_link("evalregression")]), 4, 4)
    lay.add(stat_panel("Evaluation lag", "Newest complete checkpoint step minus the highest "
                       "evaluated step.", "none",
                       [target(of_run("tunewatch_eval_lag_steps"), "lag", instant=True)],
                       thresholds(1, 1000), [runbook_link("evallagging")]), 4, 4)
    lay.add(stat_panel("Failures", "Failed evaluation attempts over the time range, all "
                       "reasons.", "none",
                       [target(of_run("sum by (job, instance) (increase("
                                      "tunewatch_eval_failures_total[$__range]))"),
                               "failures", instant=True)],
                       thresholds(1, 3), [runbook_link("evaluatorfailing")]), 4, 4)

    quality_rows(lay)
    calibration_rows(lay)
    failures_row(lay)
    breakdowns_row(lay)
    inference_server_row(lay)
    return d


def quality_rows(lay: Layout) -> None:
    """Exact match (with its interval), normalized match, cross-entropy, ECE, the
    reliability diagram and the ranking, across checkpoints."""
    lay.row("Quality across checkpoints")
    lay.add(ts("Exact match per difficulty", "Exact match rate of each evaluated checkpoint "
               "by difficulty (all = whole suite), with the step of the checkpoint evaluated "
               "(right axis), so each change lines up with its checkpoint.", "percentunit",
               [target(of_run("tunewatch_eval_exact_match_ratio"), "{{difficulty}}"),
                target(of_run("tunewatch_eval_checkpoint_step"), "checkpoint step", "B")],
               thresholds(0.5, 0.2, higher_is_worse=False), [runbook_link("evalregression")],
               0).override_by_query(
                   "B", [dm.DynamicConfigValue(id_val="unit", value="none"),
                         dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                         dm.DynamicConfigValue(id_val="custom.lineStyle",
                                               value={"fill": "dash", "dash": [10, 10]})]),
            12, 8)
    lay.add(ts("Cross-entropy per difficulty", "Teacher-forced cross-entropy of the golden "
               "answers, nats per token.", "none",
               [target(of_run("tunewatch_eval_cross_entropy"), "{{difficulty}}")],
               thresholds(2, 4), [runbook_link("evallossregression")]), 12, 8)
    lay.add(ts("Expected calibration error", "ECE of answer confidence against exact match "
               "per difficulty (0 = perfectly calibrated).", "percentunit",
               [target(of_run("tunewatch_eval_expected_calibration_error"), "{{difficulty}}")],
               thresholds(0.1, 0.2), [runbook_link("evalcalibrationdegraded")], 0, 1), 8, 8)
    lay.add(bar_chart("Reliability diagram", "Per confidence bin: the exact match rate and "
                      "the mean confidence; a calibrated model has equal bars.",
                      "percentunit",
                      [target(of_run("tunewatch_eval_calibration_bin_accuracy_ratio"),
                              "accuracy", instant=True, table_format=True),
                       target(of_run("tunewatch_eval_calibration_bin_confidence_ratio"),
                              "confidence", "B", instant=True, table_format=True)],
                      thresholds(0.5, 0.2, higher_is_worse=False), "bin"), 8, 8)
    lay.add(table_panel("Checkpoint ranking", "The last K checkpoints by composite score "
                        "(1 = best), with their exact match.", "none",
                        [target(of_run("tunewatch_eval_ranking_position"), "rank",
                                instant=True, table_format=True),
                         target(of_run("tunewatch_eval_ranking_composite_score"), "composite",
                                "B", instant=True, table_format=True),
                         target(of_run("tunewatch_eval_ranking_exact_match_ratio"),
                                "exact match", "C", instant=True, table_format=True)],
                        thresholds(2, 3), TABLE_HIDDEN, sort_by="Value #A"), 8, 8)
    lay.add(ts("Exact match with its Wilson interval", "Exact match of the whole suite "
               "with its Wilson interval (evaluator.confidence_level) shaded: a change "
               "inside the band may be noise; the regression test pairs the examples.",
               "percentunit",
               [target(of_run(f"tunewatch_eval_exact_match_ratio{{{ALL}}}"), "exact match"),
                target(of_run(f"tunewatch_eval_exact_match_low_ratio{{{ALL}}}"), "low", "B"),
                target(of_run(f"tunewatch_eval_exact_match_high_ratio{{{ALL}}}"), "high",
                       "C")],
               EXACT, [runbook_link("evalregression")], 0, 1)
            .override_by_name("high", [
                dm.DynamicConfigValue(id_val="custom.fillBelowTo", value="low"),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=25),
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=0)])
            .override_by_name("low", [
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=0)]), 12, 8)
    lay.add(ts("Normalized match per difficulty", "Match after lower-casing, collapsing "
               "whitespace, removing punctuation and evaluator.normalize_regexes; well above "
               "exact match means the answers are right but formatted differently.",
               "percentunit",
               [target(of_run("tunewatch_eval_normalized_match_ratio"), "{{difficulty}}")],
               EXACT, min_val=0, max_val=1), 12, 8)
    lay.add(ts("Fixed and broken against each baseline", "The paired outcomes behind the "
               "regression test, per baseline (previous, best): examples wrong on the "
               "baseline and right now (fixed), right on the baseline and wrong now (broken). "
               "A regression is many more broken than fixed.", "none",
               [target(of_run("tunewatch_eval_paired_fixed_examples"), "fixed {{baseline}}"),
                target(of_run("tunewatch_eval_paired_broken_examples"), "broken {{baseline}}",
                       "B")],
               thresholds(1e12, 1e13), [runbook_link("evalregression")], 0), 12, 8)
    lay.add(ts("Regression p-value across checkpoints", "Exact McNemar p-value of each "
               "evaluated checkpoint's paired outcomes against each baseline; below "
               "evaluator.regression.max_p_value with a big enough drop is a regression.",
               "none",
               [target(of_run("tunewatch_eval_regression_p_value"), "{{baseline}}")],
               thresholds(0.2, 0.05, higher_is_worse=False),
               [runbook_link("evalregression")], 0, 1), 12, 8)


def calibration_rows(lay: Layout) -> None:
    """The reliability diagram of each difficulty, and the Brier score."""
    lay.row("Calibration per difficulty")
    lay.add(bar_chart("Reliability diagram ($difficulty)", "Per confidence bin, within one "
                      "difficulty: the exact match rate and the mean confidence (a "
                      "calibrated model has equal bars). Repeated for each difficulty.",
                      "percentunit",
                      [target(of_run("tunewatch_eval_difficulty_calibration_bin_accuracy_ratio"
                                     '{difficulty="$difficulty"}'),
                              "accuracy", instant=True, table_format=True),
                       target(of_run("tunewatch_eval_difficulty_calibration_bin_confidence_"
                                     'ratio{difficulty="$difficulty"}'),
                              "confidence", "B", instant=True, table_format=True)],
                      EXACT, "bin").repeat("difficulty").repeat_direction("h")
            .max_per_row(4), 6, 8, copies=4)
    lay.add(ts("Brier score per difficulty", "Mean of (answer confidence - correct)^2: 0 is "
               "a perfect, confident model; 0.25 what a constant 50% confidence scores.",
               "none",
               [target(of_run("tunewatch_eval_brier_score"), "{{difficulty}}")],
               thresholds(0.15, 0.25), [runbook_link("evalcalibrationdegraded")], 0, 1),
            12, 8)
    lay.add(ts("Think-tag rate per difficulty", "Share of answers with a <think> block "
               "(seed 000's has_thinking_tags): for a regime that thinks, a fall means the "
               "model stopped reasoning; for one that does not, any is a leak.",
               "percentunit",
               [target(of_run("tunewatch_eval_think_tag_ratio"), "{{difficulty}}")],
               thresholds(0.5, 0.9), min_val=0, max_val=1), 12, 8)


def failures_row(lay: Layout) -> None:
    """How the wrong answers fail, the contracts, the hard examples, the next data mix."""
    lay.row("Failures, contracts and the next data round")
    lay.add(ts("Failure modes across checkpoints", "Wrong answers of the whole suite by "
               "failure mode (empty, truncated, contract violation, wrong content), stacked, "
               "at each evaluated checkpoint.", "short",
               [target(of_run(f"tunewatch_eval_failed_examples{{{ALL}}}"), "{{failure_mode}}")],
               thresholds(90, 95, percentage=True), [runbook_link("evalregression")], 0)
            .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
            .fill_opacity(40), 8, 8)
    lay.add(ts("Contract pass rate per difficulty", "Answers that honour their regime's "
               "output contract (evaluator.contracts: required prefix, stop marker); absent "
               "without contracts.", "percentunit",
               [target(of_run("tunewatch_eval_contract_pass_ratio"), "{{difficulty}}")],
               thresholds(0.95, 0.8, higher_is_worse=False), min_val=0, max_val=1), 8, 8)
    lay.add(ts("Hard examples per checkpoint", "Wrong answers each evaluated checkpoint "
               "appended to the hard-example files (<state_dir>/hard_examples/), per "
               "difficulty: the next data round's material.", "short",
               [target(of_run("tunewatch_eval_hard_examples"), "{{difficulty}}")],
               thresholds(90, 95, percentage=True), min_val=0)
            .draw_style(cm.GraphDrawStyle.BARS), 8, 8)
    lay.add(bar_gauge("Recommended curriculum mix", "Share of the next data round per "
                      "difficulty: more where exact match is low, at least "
                      "evaluator.curriculum_min_share each.", "percentunit",
                      [target(of_run("tunewatch_eval_curriculum_mix_ratio"),
                              "{{difficulty}}", instant=True)],
                      thresholds(1.01, 1.02), 0, 1), 8, 6)
    lay.add(stat_panel("Prediction recording cost", "Estimated generation time of the "
                       "prediction rows recorded per checkpoint and over the whole run "
                       "(predictions.sample_size; docs/predictions.md).", "s",
                       [target(of_run("tunewatch_eval_predictions_cost_checkpoint_seconds"),
                               "per checkpoint", instant=True),
                        target(of_run("tunewatch_eval_predictions_cost_run_seconds"),
                               "per run", "B", instant=True)],
                       thresholds(600, 3600),
                       [to_dashboard("predictions", "Predictions")]), 8, 6)


def breakdowns_row(lay: Layout) -> None:
    """Exact match by regime, source, pattern and length bucket; throughput; energy."""
    lay.row("Breakdowns and throughput")
    lay.add(matrix_table("Exact match by pattern x prompt length", "Exact match of the "
                         "latest checkpoint per pattern (rows, at most evaluator.max_patterns; "
                         "the rest as `other`) and prompt length in tokens (columns), over "
                         "every example. Green above 80%, red below 60% (seed 001). A cell "
                         "opens the Predictions dashboard on that pattern and length.",
                         "percentunit",
                         target(of_run("tunewatch_eval_pattern_length_exact_match_ratio"),
                                "{{pattern}} {{length_bucket}}", instant=True,
                                table_format=True),
                         SEED_HEATMAP, "pattern", "length_bucket",
                         ("Predictions of this pattern and length", PREDICTIONS_CELL)),
            12, 8)
    lay.add(ts("Exact match by regime", "Exact match per regime (emoji_think, regime3, "
               "plain_sft, ... or as derived by evaluator.derive_labels) across checkpoints.",
               "percentunit",
               [target(of_run("tunewatch_eval_regime_exact_match_ratio"), "{{regime}}")],
               EXACT, min_val=0, max_val=1), 6, 8)
    lay.add(ts("Exact match by source", "Exact match per source pool (fixed_eval, train, "
               "failures, ...) across checkpoints.", "percentunit",
               [target(of_run("tunewatch_eval_source_exact_match_ratio"), "{{source}}")],
               EXACT, min_val=0, max_val=1), 6, 8)
    lay.add(heatmap_panel("Exact match by pattern across checkpoints", "Exact match rate "
                          "per pattern (rows) over time (one column per evaluation).",
                          "percentunit",
                          [target(of_run("tunewatch_eval_pattern_exact_match_ratio"),
                                  "{{pattern}}")],
                          thresholds(0.5, 0.2, higher_is_worse=False)), 8, 8)
    lay.add(heatmap_panel("Exact match by prompt length across checkpoints", "Exact match "
                          "rate per prompt-length bucket in tokens (rows) over time.",
                          "percentunit",
                          [target(of_run("tunewatch_eval_length_bucket_exact_match_ratio"),
                                  "{{length_bucket}}")],
                          thresholds(0.5, 0.2, higher_is_worse=False)), 8, 8)
    lay.add(ts("Throughput and VRAM", "Generated tokens per second of each evaluation "
               "against the peak GPU memory on the eval host (fraction of installed): a "
               "larger batch raises both until memory runs out.", "short",
               [target(of_run("tunewatch_eval_tokens_per_second"), "tokens/s"),
                target("max by (host) (tunewatch_gpu_memory_used_peak_bytes / "
                       f"tunewatch_gpu_memory_total_bytes and on (host) {EVAL_HOSTS})",
                       "{{host}} peak VRAM", "B")],
               thresholds(90, 95, percentage=True)).override_by_query(
                   "B", [dm.DynamicConfigValue(id_val="unit", value="percentunit"),
                         dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                         dm.DynamicConfigValue(id_val="max", value=1)]), 8, 8)
    lay.add(ts("Joules per evaluated example", "Energy of the eval host's GPUs (5m rate of "
               "their energy counters) over the examples the evaluator scored per second; "
               "absent between evaluations. A host that also trains counts the training's "
               "energy too (docs/efficiency.md).", "joule",
               [target(f"host:tunewatch_eval_energy_per_example:joules and on (host) "
                       f"{EVAL_HOSTS}", "{{host}}")],
               thresholds(90, 95, percentage=True), min_val=0), 12, 8)


def inference_server_row(lay: Layout) -> None:
    """Evaluation through the inference server and deployment of the best checkpoint
    (docs/remote.md): empty for an evaluator with the local backend and no deploy_best."""
    rate = "[$__rate_interval]"
    lay.row("Inference server (backend: remote, deploy_best)")
    lay.add(ts("Inference server jobs", "Generation jobs answered per second, jobs that "
               "gave no answer (timeout, failed, bad_response) and retried requests "
               "(connection, server_error, rate_limited), per second.", "reqps",
               [target(of_run(f"sum by (job, instance) (rate("
                              f"tunewatch_eval_remote_jobs_total{rate}))"), "answered"),
                target(of_run(f"sum by (job, instance, reason) (rate("
                              f"tunewatch_eval_remote_job_failures_total{rate}))"),
                       "no answer: {{reason}}", "B"),
                target(of_run(f"sum by (job, instance, reason) (rate("
                              f"tunewatch_eval_remote_request_retries_total{rate}))"),
                       "retried: {{reason}}", "C")],
               thresholds(0.1, 1), [runbook_link("evaluatorfailing")], 0), 8, 8)
    lay.add(ts("Mean wait per job", "From queueing a job to its answer, averaged over the "
               "jobs answered in each interval (server queue plus generation).", "s",
               [target(of_run(f"rate(tunewatch_eval_remote_job_wait_seconds_total{rate})"
                              f" / (rate(tunewatch_eval_remote_jobs_total{rate}) > 0)"),
                       "mean wait")],
               thresholds(30, 120), [runbook_link("evaluatorfailing")], 0), 8, 8)
    lay.add(stat_panel("Deployed step", "Step of the checkpoint deployed to the inference "
                       "server (remote.deploy_best); `tunewatch deploy status` has the "
                       "history.", "none",
                       [target(of_run("tunewatch_eval_deployed_checkpoint_step"), "deployed",
                               instant=True)],
                       thresholds(1e12, 1e13), light=False), 4, 8)
    lay.add(stat_panel("Deployment failures", "Failed deployments of the best checkpoint "
                       "over the time range, all reasons.", "none",
                       [target(of_run("sum by (job, instance) (increase("
                                      "tunewatch_eval_deployment_failures_total[$__range]))"),
                               "failures", instant=True)],
                       thresholds(1, 3), [runbook_link("evaldeploymentfailing")]), 4, 8)
