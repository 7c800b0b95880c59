"""Run overview dashboard: one run across both hosts, the home of the `tunewatch` folder.

Why a page of its own: seed 001's control room answered "is my run healthy?" at a glance,
across the training host and the eval host. Here: the training state, step and epoch, the
newest checkpoint on each host (the files collector of every host the run reports from),
the step the evaluator last evaluated and how far it trails the trainer, the alerts firing
for the run or its hosts (Prometheus' ALERTS series), efficiency (MFU and joules per token,
from prometheus/rules/efficiency.rules.yml) and the hosts' GPUs. Every panel links to the
dashboard that has the detail, with the same run and time range.

The run's hosts: the training host is the `host` target label of its training metrics,
the eval host the one of the evaluator whose tunewatch_eval_run_info names the run.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from .common import (
    NO_GPU_OF_RUN,
    Layout,
    bar_gauge,
    datasource_variable,
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
from .training import STATE_LIGHT

R = 'run="$run"'
EVAL_RUN = f"tunewatch_eval_run_info{{{R}}}"
# The hosts of the run: where its trainer reports from, and where its evaluator runs.
RUN_HOSTS = (f"group by (host) (tunewatch_training_step{{{R}}}) or "
             f"group by (host) ({EVAL_RUN})")
EVALUATED = f"max(tunewatch_eval_checkpoint_step and on (job, instance) {EVAL_RUN})"
# Alerts about the run (a `run` label) or about one of its hosts (a `host` label).
FIRING = (f'ALERTS{{alertstate="firing", {R}}} or '
          f'(ALERTS{{alertstate="firing"}} and on (host) ({RUN_HOSTS}))')
STEP_FACT = thresholds(1e12, 1e13)  # a step number: a fact, never a judgement
ALERT_HIDDEN = ["Time", "__name__", "alertstate", "job", "instance", "Value"]
ALERT_RUNBOOK = runbook_link("thresholds", "Runbook: every alert")


def build() -> db.Dashboard:
    """The Run overview dashboard."""
    d = new_dashboard("overview", "tunewatch / Run overview",
                      "One run across the training and the eval host: state, progress, "
                      "checkpoints on each host, evaluation and its lag, firing alerts, "
                      "efficiency; every panel links to the dashboard with the detail.")
    d.with_variable(datasource_variable())
    d.with_variable(query_variable("run", "Run", "label_values(tunewatch_training_run_info, run)"))
    lay = Layout(d)
    training = [to_dashboard("training", "Training run")]
    evaluation = [to_dashboard("evaluation", "Evaluation")]
    hardware = [to_dashboard("hardware", "Hardware")]

    lay.row("Run")
    lay.add(stat_panel("State", "Training state (green training or completed, yellow idle "
                       "or paused, red crashed, stale or unknown).", "none",
                       [target(STATE_LIGHT, "{{state}}", instant=True)], thresholds(1, 2),
                       [*training, runbook_link("trainingcrashed")],
                       text_mode=cm.BigValueTextMode.NAME), 4, 4)
    lay.add(stat_panel("Step", "Optimizer steps done and the run's max_steps.", "none",
                       [target(f"max(tunewatch_training_step{{{R}}})", "step", instant=True),
                        target(f"max(tunewatch_training_max_steps{{{R}}})", "max steps", "B",
                               instant=True)], STEP_FACT, training, light=False), 4, 4)
    lay.add(bar_gauge("Progress", "Steps done out of max_steps.", "percentunit",
                      [target(f"run:tunewatch_training_progress:ratio{{{R}}}", "progress",
                              instant=True)], thresholds(1.01, 1.02), 0, 1), 6, 4)
    lay.add(stat_panel("Epoch", "Epochs completed, fractional.", "none",
                       [target(f"max(tunewatch_training_epoch{{{R}}})", "epoch",
                               instant=True)], STEP_FACT, training, light=False), 3, 4)
    lay.add(stat_panel("Firing alerts", "Alerts firing now for this run or one of its "
                       "hosts, by severity (none: 0).", "none",
                       [target(f"count by (severity) ({FIRING}) or on () vector(0)",
                               "{{severity}}", instant=True)],
                       thresholds(1, 2), [ALERT_RUNBOOK]), 7, 4)

    checkpoints_row(lay, evaluation, hardware)
    alerts_and_efficiency_row(lay, training, hardware)
    return d


def checkpoints_row(lay: Layout, evaluation: list[db.DashboardLink],
                    hardware: list[db.DashboardLink]) -> None:
    """The newest checkpoint on each host, the evaluated step and the lag between them."""
    lay.row("Checkpoints and evaluation")
    lay.add(stat_panel("Newest checkpoint per host", "Step of the newest complete "
                       "checkpoint directory on each of the run's hosts (files collector): "
                       "the eval host trailing the training host means the copy lags.",
                       "none",
                       [target(f"max by (host, role) (tunewatch_files_checkpoint_newest_step "
                               f"and on (host) ({RUN_HOSTS}))", "{{host}} ({{role}})",
                               instant=True)],
                       STEP_FACT, [*hardware, runbook_link("checkpointsynclagging")],
                       light=False), 6, 4)
    lay.add(stat_panel("Evaluated step", "Step of the checkpoint the evaluator last "
                       "published, and the best one so far.", "none",
                       [target(EVALUATED, "evaluated", instant=True),
                        target(f"max(tunewatch_eval_best_checkpoint_step and on (job, "
                               f"instance) {EVAL_RUN})", "best", "B", instant=True)],
                       STEP_FACT, evaluation, light=False), 5, 4)
    lay.add(stat_panel("Train-to-eval lag", "Training step now minus the evaluated step "
                       "(steps the evaluation trails by, a checkpoint interval or so when "
                       "healthy), and the evaluator's own backlog: newest complete "
                       "checkpoint minus evaluated.", "none",
                       [target(f"max(tunewatch_training_step{{{R}}}) - {EVALUATED}",
                               "trainer - evaluated", instant=True),
                        target(f"max(tunewatch_eval_lag_steps and on (job, instance) "
                               f"{EVAL_RUN})", "evaluator backlog", "B", instant=True)],
                       thresholds(1000, 5000), [*evaluation, runbook_link("evallagging")]),
            5, 4)
    lay.add(stat_panel("Exact match", "Exact match of the whole suite at the evaluated "
                       "checkpoint.", "percentunit",
                       [target(f'max(tunewatch_eval_exact_match_ratio{{difficulty="all"}} '
                               f"and on (job, instance) {EVAL_RUN})", "exact match",
                               instant=True)],
                       thresholds(0.5, 0.2, higher_is_worse=False),
                       [*evaluation, runbook_link("evalregression")]), 4, 4)
    lay.add(stat_panel("Last evaluation", "Time since the evaluator last finished a "
                       "checkpoint.", "s",
                       [target(f"time() - max(tunewatch_eval_last_success_timestamp_seconds "
                               f"and on (job, instance) {EVAL_RUN})", "age", instant=True)],
                       thresholds(3600, 4 * 3600), [*evaluation,
                                                    runbook_link("evaluatorsilent")]), 4, 4)
    lay.add(ts("Trainer and evaluated step", "The trainer's step and the step of the "
               "checkpoint evaluated, over time: the gap is the train-to-eval lag.", "none",
               [target(f"max(tunewatch_training_step{{{R}}})", "trainer step"),
                target(EVALUATED, "evaluated step", "B")],
               STEP_FACT, evaluation, min_val=0), 12, 7)
    lay.add(ts("Exact match across checkpoints", "Exact match of the whole suite at each "
               "evaluated checkpoint.", "percentunit",
               [target(f'tunewatch_eval_exact_match_ratio{{difficulty="all"}} and on (job, '
                       f"instance) {EVAL_RUN}", "exact match")],
               thresholds(0.5, 0.2, higher_is_worse=False),
               [*evaluation, to_dashboard("predictions", "Predictions: the answers")], 0, 1),
            12, 7)


def alerts_and_efficiency_row(lay: Layout, training: list[db.DashboardLink],
                              hardware: list[db.DashboardLink]) -> None:
    """The alerts firing now, efficiency and the hosts' GPUs."""
    lay.row("Alerts, efficiency and hosts")
    lay.add(table_panel("Alerts firing", "Every alert firing for the run (its `run` label) "
                        "or for one of its hosts (`host`), with its labels; the runbook has "
                        "a section per alert.", "none",
                        [target(FIRING, "{{alertname}}", instant=True, table_format=True)],
                        thresholds(1, 2), ALERT_HIDDEN)
            .links([ALERT_RUNBOOK]), 12, 7)
    lay.add(stat_panel("MFU and joules per token", "Model FLOPs utilisation and the energy "
                       "per training token of the run's GPUs (efficiency recording rules, "
                       "docs/efficiency.md).", "none",
                       [target(f"run:tunewatch_training_mfu:ratio{{{R}}}", "MFU",
                               instant=True),
                        target(f"run:tunewatch_training_energy_per_token:joules{{{R}}}",
                               "J/token", "B", instant=True)],
                       thresholds(1e30, 1e31), training, light=False)
            .override_by_query("A", [dm.DynamicConfigValue(id_val="unit", value="percentunit")])
            .override_by_query("B", [dm.DynamicConfigValue(id_val="unit", value="joule")])
            .no_value(NO_GPU_OF_RUN), 6, 7)
    lay.add(ts("GPU utilization per host", "Utilization of every GPU of the run's hosts "
               "(training and eval side by side on the Hardware dashboard).",
               "percentunit",
               [target(f"avg by (host) (tunewatch_gpu_utilization_ratio and on (host) "
                       f"({RUN_HOSTS}))", "{{host}}")],
               thresholds(0.7, 0.3, higher_is_worse=False), hardware, 0, 1), 6, 7)
