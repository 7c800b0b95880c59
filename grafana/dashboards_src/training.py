"""Training run dashboard: one run's summary bar, loss, throughput, ETAs, batch size against
GPU memory, efficiency (MFU, joules per token), the data queue and the host's swap.

Why recorded series: trends, rates, ETAs and baselines are recording rules
(prometheus/rules/training.rules.yml, DESIGN section 3), so the dashboard, the alerts and
anyone querying Prometheus see the same numbers. Raw series are only used for facts
(state, model, current file). The run is chosen by the `run` variable; the GPU light
follows the run to its host through the `host` target label, and so do the queue panels
(the host exporter's files collector, which serves callback and sidecar runs alike) and the
swap panel (node_exporter).
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
    target,
    thresholds,
    ts,
    xy_chart,
)

R = 'run="$run"'
# The hosts the run's trainer reports from (target label), to find its GPUs and disks.
# The state as a light: 0 (green) training or completed, 1 (yellow) idle or paused, 2 (red)
# crashed, stale or unknown; the stat shows the state's name, coloured by this number.
STATE_LIGHT = " or ".join(
    f'(tunewatch_training_state{{{R}, state=~"{states}"}} == 1) * {level}'
    for level, states in enumerate(("training|completed", "idle|paused",
                                    "crashed|stale|unknown")))
RUN_HOSTS = f"group by (host) (tunewatch_training_step{{{R}}})"
# Throughput: tokens/s, or samples/s where the trainer counts no tokens (seed 001's axis).
THROUGHPUT = (f"run:tunewatch_training_tokens:rate5m{{{R}}} or "
              f"run:tunewatch_training_samples:rate5m{{{R}}}")
# The trainer's GPU memory: its processes on the training hosts (not an evaluator of the
# same run), each at its highest within the interval, summed.
TRAINER_MEMORY = ("sum by (run) (max_over_time(tunewatch_gpu_process_memory_used_bytes"
                  f'{{{R}, role!="eval"}}[$__rate_interval]))')


def build() -> db.Dashboard:
    """The Training run dashboard."""
    d = new_dashboard("training", "tunewatch / Training run",
                      "One fine-tuning run: state, progress, health lights, loss, throughput, "
                      "ETAs and the data queue (run variable).")
    d.with_variable(datasource_variable())
    d.with_variable(query_variable("run", "Run", "label_values(tunewatch_training_run_info, run)"))
    lay = Layout(d)

    lay.row("Run")
    lay.add(stat_panel("State", "Training state reported by the trainer or the sidecar "
                       "(stale: no status update for too long; unknown: no status file).",
                       "none", [target(STATE_LIGHT, "{{state}}", instant=True)],
                       thresholds(1, 2), [runbook_link("trainingcrashed")],
                       text_mode=cm.BigValueTextMode.NAME), 3, 4)
    lay.add(stat_panel("Model", "Model (and data set) the run trains, from "
                       "tunewatch_training_run_info.", "none",
                       [target(f"tunewatch_training_run_info{{{R}}}", "{{model}}",
                               instant=True)],
                       thresholds(2, 3), text_mode=cm.BigValueTextMode.NAME,
                       light=False), 4, 4)
    lay.add(stat_panel("Checkpoint", "Step of the last checkpoint saved (the trainer's "
                       "callback; for a sidecar run, the newest checkpoint directory on the "
                       "run's host).", "none",
                       [target(f"max(tunewatch_training_last_checkpoint_step{{{R}}}) or "
                               f"max(tunewatch_files_checkpoint_newest_step and on (host) "
                               f"{RUN_HOSTS})", "checkpoint", instant=True)],
                       thresholds(1e12, 1e13), light=False), 3, 4)
    lay.add(bar_gauge("Progress", "Steps done out of max_steps.", "percentunit",
                      [target(f"run:tunewatch_training_progress:ratio{{{R}}}", "progress",
                              instant=True)],
                      thresholds(1.01, 1.02), 0, 1), 5, 4)
    lay.add(stat_panel("Loss trend", "Change of the loss over 15 minutes relative to its "
                       "5-minute mean (from its slope): negative is learning, positive is "
                       "getting worse.", "percentunit",
                       [target(f"run:tunewatch_training_loss:deriv15m{{{R}}} * 900 / "
                               f"run:tunewatch_training_loss:avg5m{{{R}}}", "loss trend",
                               instant=True)],
                       thresholds(0, 0.1), [runbook_link("traininglossspike")]), 3, 4)
    lay.add(stat_panel("Throughput", "Tokens per second (samples per second where the "
                       "trainer counts no tokens) against the run's own baseline (median of "
                       "the last hour); below 80% is slow.", "percentunit",
                       [target(f"run:tunewatch_training_throughput_vs_baseline:ratio{{{R}}}",
                               "throughput vs baseline", instant=True)],
                       thresholds(0.8, 0.5, higher_is_worse=False),
                       [runbook_link("throughputbelowbaseline")]), 3, 4)
    lay.add(stat_panel("GPU temp headroom", "Degrees left before the hottest GPU of the "
                       "run's host reaches its slowdown temperature.", "celsius",
                       [target("min by (host) (tunewatch_gpu_temperature_slowdown_celsius - "
                               f"tunewatch_gpu_temperature_celsius and on (host) {RUN_HOSTS})",
                               "{{host}}", instant=True)],
                       thresholds(10, 3, higher_is_worse=False),
                       [runbook_link("gputemperaturehigh")]), 3, 4)

    lay.row("Loss")
    lay.add(ts("Loss", "Training loss as logged, its 5-minute mean, and the validation loss "
               "of the last evaluation during training.", "none",
               [target(f"tunewatch_training_loss{{{R}}}", "loss"),
                target(f"run:tunewatch_training_loss:avg5m{{{R}}}", "5m mean", "B"),
                target(f"tunewatch_training_eval_loss{{{R}}}", "validation loss", "C")],
               thresholds(5, 10), [runbook_link("traininglossspike")]), 12, 8)
    lay.add(ts("Loss trend and variance", "Slope of the loss over 15 minutes (per second; "
               "below zero while it falls) and its variance over 15 minutes (noise).",
               "none",
               [target(f"run:tunewatch_training_loss:deriv15m{{{R}}}", "slope /s"),
                target(f"run:tunewatch_training_loss:stdvar15m{{{R}}}", "variance", "B")],
               thresholds(0.01, 0.1)), 6, 8)
    lay.add(ts("Validation / training gap", "Validation loss minus the 5-minute mean "
               "training loss; a gap that keeps growing is overfitting.", "none",
               [target(f"run:tunewatch_training_eval_loss_gap:avg5m{{{R}}}", "gap")],
               thresholds(0.1, 0.3), show_thresholds=True), 6, 8)

    lay.row("Throughput and ETA")
    lay.add(ts("Tokens per second", "Input tokens per second (5m rate), smoothed over 15 "
               "minutes, and the baseline (median over the last hour).", "short",
               [target(f"run:tunewatch_training_tokens:rate5m{{{R}}}", "tokens/s"),
                target(f"avg_over_time(run:tunewatch_training_tokens:rate5m{{{R}}}[15m])",
                       "smoothed 15m", "B"),
                target(f"run:tunewatch_training_tokens:rate5m_median1h{{{R}}}",
                       "baseline (1h median)", "C")],
               thresholds(90, 95, percentage=True),
               [runbook_link("throughputbelowbaseline")]), 12, 8)
    lay.add(ts("Steps and samples per second", "Optimizer steps per second (slope of the "
               "step), training samples per second and their baseline (median over the "
               "last hour; the throughput alert uses it where the trainer counts no "
               "tokens).", "short",
               [target(f"run:tunewatch_training_step:rate5m{{{R}}}", "steps/s"),
                target(f"run:tunewatch_training_samples:rate5m{{{R}}}", "samples/s", "B"),
                target(f"run:tunewatch_training_samples:rate5m_median1h{{{R}}}",
                       "samples/s baseline (1h median)", "C")],
               thresholds(90, 95, percentage=True), [runbook_link("trainingstalled")]), 6, 8)
    lay.add(stat_panel("ETA", "Time left: the run (max_steps at the recent step rate), the "
                       "current file, and the queued files at the recent sample rate.", "s",
                       [target(f"run:tunewatch_training_remaining_seconds:rate5m{{{R}}}",
                               "run", instant=True),
                        target(f"run:tunewatch_training_current_file_remaining_seconds:rate5m"
                               f"{{{R}}}", "current file", "B", instant=True),
                        target(f"run:tunewatch_training_queue_remaining_seconds:rate5m{{{R}}}",
                               "queue", "C", instant=True)],
                       thresholds(86400, 604800)), 6, 8)
    lay.add(ts("Gradient norm and learning rate", "Gradient norm before clipping "
               "(spikes precede loss spikes) and the learning rate schedule.", "none",
               [target(f"tunewatch_training_grad_norm{{{R}}}", "grad norm"),
                target(f"tunewatch_training_learning_rate{{{R}}}", "learning rate", "B")],
               thresholds(10, 100)), 12, 8)

    batch_size_row(lay)
    lay.row("Efficiency")
    lay.add(ts("Model FLOPs utilisation", "Share of the run's GPUs' peak the model's own "
               "FLOPs use: 6 x parameters x tokens/s over the summed dense BF16 peak of the "
               "GPUs holding the run's memory (attention FLOPs left out, so a lower bound; "
               "docs/efficiency.md). Absent without a token count, a parameter count or a "
               "known board.", "percentunit",
               [target(f"run:tunewatch_training_mfu:ratio{{{R}}}", "MFU")],
               thresholds(0.3, 0.1, higher_is_worse=False), min_val=0)
            .no_value(NO_GPU_OF_RUN), 9, 8)
    lay.add(ts("Joules per token", "Energy the run's GPUs drew per training token: their "
               "power (5m rate of the energy counters) over tokens per second. Lower is "
               "better; idle GPUs of the run count too.", "joule",
               [target(f"run:tunewatch_training_energy_per_token:joules{{{R}}}",
                       "J/token")],
               thresholds(90, 95, percentage=True), min_val=0)
            .no_value(NO_GPU_OF_RUN), 9, 8)
    lay.add(stat_panel("Peak of the run's GPUs", "Summed dense BF16 tensor-core peak of the "
                       "GPUs that hold memory of the run's processes: MFU's denominator "
                       "(tunewatch_gpu_peak_flops, from the board's datasheet).", "flops",
                       [target(f"run:tunewatch_gpu_peak_flops:sum{{{R}}}", "peak",
                               instant=True)],
                       thresholds(1e30, 1e31), light=False), 3, 8)
    lay.add(stat_panel("Model parameters", "Parameters of the model the run trains, all of "
                       "them (MFU counts every one) and those the optimizer updates.",
                       "short",
                       [target(f"max(tunewatch_training_model_parameters{{{R}}})", "total",
                               instant=True),
                        target(f"max(tunewatch_training_model_trainable_parameters{{{R}}})",
                               "trainable", "B", instant=True)],
                       thresholds(1e30, 1e31), light=False), 3, 8)

    lay.row("Data")
    lay.add(stat_panel("Current file", "The data file the trainer works on (sidecar).",
                       "none",
                       [target(f"tunewatch_training_current_file_info{{{R}}}", "{{file}}",
                               instant=True)],
                       thresholds(2, 3), text_mode=cm.BigValueTextMode.NAME,
                       light=False), 6, 4)
    lay.add(bar_gauge("Current file progress", "Batches done out of the file's batches.",
                      "percentunit",
                      [target(f"tunewatch_training_batch{{{R}}} / "
                              f"tunewatch_training_batches{{{R}}}", "batch", instant=True)],
                      thresholds(1.01, 1.02), 0, 1), 6, 4)
    lay.add(bar_gauge("Queue depth per priority", "Queued JSONL files waiting for training "
                      "on the run's host, per priority (the host exporter's files collector, "
                      "what DataQueueLow reads); an empty queue stalls the run.", "short",
                      [target(f"sum by (priority) (tunewatch_files_queue_files and on (host) "
                              f"{RUN_HOSTS})", "{{priority}}", instant=True)],
                      thresholds(2, 1, higher_is_worse=False)), 6, 4)
    lay.add(ts("Queued examples per priority", "Examples in the queued files, and lines "
               "that are not valid ChatML (they will be skipped or break the trainer); the "
               "sidecar reads the files, a callback run leaves this empty.",
               "short",
               [target(f"tunewatch_training_queue_examples{{{R}}}", "{{priority}} examples"),
                target(f"tunewatch_training_queue_malformed_lines{{{R}}}",
                       "{{priority}} malformed", "B")],
               thresholds(90, 95, percentage=True), [runbook_link("dataqueuelow")]), 6, 8)
    queue_and_host_row(lay)
    return d


def batch_size_row(lay: Layout) -> None:
    """Seed 001's throughput against GPU memory, for choosing a batch size."""
    lay.row("Batch size and GPU memory")
    lay.add(xy_chart("Throughput vs trainer GPU memory by batch size", "Each point: the "
                     "run's throughput (tokens/s, or samples/s without a token count) "
                     "against the trainer processes' peak GPU memory, coloured by the batch "
                     "size (samples per optimizer step). Try batch sizes: the best is the "
                     "highest throughput that leaves memory headroom.", "short",
                     [target(THROUGHPUT, "throughput"),
                      target(TRAINER_MEMORY, "trainer GPU memory", "B"),
                      target(f"tunewatch_training_batch_size{{{R}}}", "batch size", "C")],
                     thresholds(90, 95, percentage=True), "trainer GPU memory", "throughput",
                     "batch size", [runbook_link("gpumemorynearlyfull")])
            .override_by_name("trainer GPU memory", [
                dm.DynamicConfigValue(id_val="unit", value="bytes")]), 12, 9)
    lay.add(ts("Batch size, throughput and GPU memory", "The same three series over time: "
               "batch size (samples per optimizer step, from the callback or the status "
               "file's batch_size), throughput and the trainer processes' peak GPU memory "
               "(right axis).", "short",
               [target(f"tunewatch_training_batch_size{{{R}}}", "batch size"),
                target(THROUGHPUT, "throughput", "B"),
                target(TRAINER_MEMORY, "trainer GPU memory", "C")],
               thresholds(90, 95, percentage=True), min_val=0).override_by_query(
                   "C", [dm.DynamicConfigValue(id_val="unit", value="bytes"),
                         dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]),
            12, 9)


def queue_and_host_row(lay: Layout) -> None:
    """The queue's bytes and age (files collector), the epoch, and the host's swap."""
    lay.add(ts("Queue bytes and newest file age", "Bytes of the queued files per priority "
               "and the age of the newest one (right axis): a queue that stops growing "
               "means the data generator stopped.", "bytes",
               [target(f"sum by (priority) (tunewatch_files_queue_bytes and on (host) "
                       f"{RUN_HOSTS})", "{{priority}} bytes"),
                target(f"max by (priority) (time() - "
                       f"tunewatch_files_queue_newest_file_timestamp_seconds and on (host) "
                       f"{RUN_HOSTS})", "{{priority}} newest file age", "B")],
               thresholds(90, 95, percentage=True),
               [runbook_link("dataqueuelow")]).override_by_query(
                   "B", [dm.DynamicConfigValue(id_val="unit", value="s"),
                         dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")]),
            8, 8)
    lay.add(ts("Queue filesystem free", "Bytes free on the filesystem of each queue "
               "directory of the run's host; DiskNearlyFull fires below 5 GiB.", "bytes",
               [target(f"min by (priority) (tunewatch_files_queue_filesystem_free_bytes and "
                       f"on (host) {RUN_HOSTS})", "{{priority}}")],
               thresholds(10 * 2**30, 5 * 2**30, higher_is_worse=False),
               [runbook_link("disknearlyfull")], 0), 5, 8)
    lay.add(ts("Epoch", "Epochs completed (fractional), from the Trainer or the status "
               "file.", "none",
               [target(f"tunewatch_training_epoch{{{R}}}", "epoch")],
               thresholds(1e6, 1e7), min_val=0), 5, 8)
    lay.add(ts("Host swap", "Swap in use on the run's hosts (node_exporter) and its size: "
               "a trainer host that swaps slows every step.", "bytes",
               [target(f"node_memory_SwapTotal_bytes - node_memory_SwapFree_bytes and on "
                       f"(host) {RUN_HOSTS}", "{{host}} used"),
                target(f"node_memory_SwapTotal_bytes and on (host) {RUN_HOSTS}",
                       "{{host}} size", "B")],
               thresholds(2**30, 4 * 2**30), min_val=0), 6, 8)
