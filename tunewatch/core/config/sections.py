"""The sections of tunewatch.yml as typed dataclasses, one per process or concern.

Why dataclasses with defaults: every key has a documented default, so an absent file is a
valid configuration, and the loader (loader.py) can check each value against its type
annotation. Range rules that types cannot express live in checks.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ProcessTarget:
    """One process the host exporter follows: found by pid file, name or command line."""

    name: str = ""
    pid_file: str = ""
    process_name: str = ""
    cmdline_pattern: str = ""


@dataclass
class QueueDir:
    """A data queue directory; `priority` is the label its metrics carry."""

    path: str = ""
    priority: Literal["high", "normal", "low"] = "normal"


@dataclass
class ExporterConfig:
    """`tunewatch exporter`: the host exporter (GPU, process and files collectors)."""

    listen_address: str = "127.0.0.1:9945"
    web_config_file: str = ""
    max_concurrent_scrapes: int = 8
    scrape_wait_seconds: float = 1.0
    openmetrics: bool = False
    gzip_level: int = 1
    collector_timeout_seconds: float = 5.0
    collectors: dict[str, bool] = field(
        default_factory=lambda: {"gpu": True, "process": True, "files": True}
    )
    processes: list[ProcessTarget] = field(default_factory=list)
    process_max_matches: int = 32
    checkpoint_dirs: list[str] = field(default_factory=list)
    queue_dirs: list[QueueDir] = field(default_factory=list)
    gpu_max_processes: int = 16
    gpu_sample_interval_seconds: float = 1.0
    gpu_readings_file: str = ""


@dataclass
class TrainingConfig:
    """Training metrics: the in-process callback and `tunewatch training-sidecar`."""

    listen_address: str = "127.0.0.1:9946"
    web_config_file: str = ""
    max_concurrent_scrapes: int = 8
    scrape_wait_seconds: float = 1.0
    openmetrics: bool = False
    gzip_level: int = 1
    status_file: str = "status/training_status.json"
    queue_dirs: list[QueueDir] = field(default_factory=list)
    stale_after_seconds: float = 300.0
    crash_grace_seconds: float = 30.0
    # The callback never stops a run: a port it cannot bind is retried this often meanwhile.
    bind_retry_seconds: float = 10.0
    # Distinct names of the `metric` label (logged values; evaluation values); the rest are
    # counted as dropped.
    max_logged_metrics: int = 64


@dataclass
class ContractConfig:
    """An output contract for one regime (the seeds' emoji contracts).

    required_prefix: the answer (think blocks stripped, whitespace trimmed) must start with it;
    stop_marker: it must end with it. The stop marker is also a stop string for that regime's
    generation and stays part of the answer. Empty means no check.
    """

    required_prefix: str = ""
    stop_marker: str = ""


@dataclass
class RegressionConfig:
    """When a drop counts as a regression (DESIGN section 9)."""

    min_drop_overall: float = 0.05
    min_drop_per_difficulty: float = 0.10
    max_p_value: float = 0.05
    loss_rise_ratio: float = 0.15


@dataclass
class RemoteConfig:
    """The inference server of seed 000 (POST /generate, GET /jobs/{id}; docs/remote.md).

    url: the server, e.g. http://gpu-host:8765 ("" = none). model_id: the id a checkpoint
    has there, a template over {run}, {checkpoint} (directory name) and {step}.
    activate: register and activate each checkpoint before evaluating it (a server kept for
    evaluation); false: only check that the served model is the checkpoint, refuse if not.
    deploy_best: after each evaluation make the best checkpoint the served one, recording
    the one it replaces in deploy_history ("" = <evaluator.state_dir>/deployments.jsonl) so
    that `tunewatch deploy rollback` undoes it. logprobs: ask for token log-probabilities
    (answer confidence and calibration); a server without them leaves those figures absent.
    request_timeout_seconds: of one HTTP request; request_retries: tries of a request that
    met a refused connection or a 5xx, retry_backoff_seconds apart, doubling.
    job_timeout_seconds: a job not done by then fails (the seeds' 2 minutes).
    poll_initial_seconds / poll_max_seconds: job polling, doubling from the first to the max.
    max_parallel_jobs: jobs of one batch queued at once.
    """

    url: str = ""
    model_id: str = "{run}-{checkpoint}"
    source: str = "tunewatch"
    activate: bool = False
    deploy_best: bool = False
    deploy_history: str = ""
    logprobs: bool = True
    request_timeout_seconds: float = 10.0
    request_retries: int = 3
    retry_backoff_seconds: float = 0.5
    job_timeout_seconds: float = 120.0
    poll_initial_seconds: float = 0.05
    poll_max_seconds: float = 2.0
    max_parallel_jobs: int = 8

    def model_id_for(self, run: str, checkpoint: str, step: int | None) -> str:
        """A checkpoint's id on the server: `model_id` formatted with the run, the
        checkpoint's directory name and its step ("" when unknown). Why here: the remote
        backend and the configuration check must format it the same way."""
        return self.model_id.format(run=run, checkpoint=checkpoint,
                                    step="" if step is None else step)


@dataclass
class EvaluatorConfig:
    """The evaluation core (`tunewatch eval-once`) and the daemon (`tunewatch evaluate`).

    Evaluation keys (docs/evaluation.md has the definitions):
    data / files: the suite directory and its files (empty: every *.jsonl there).
    device: auto | cpu | cuda | cuda:N. dtype: auto (float32 on CPU, the checkpoint's own
    dtype on GPU) or an explicit one.
    batch_size: examples per generation batch (halved and retried on out-of-memory).
    max_new_tokens: generation budget; an answer that uses it all without ending is
    `truncated`. stop_strings: extra strings that end an answer (removed from it).
    think: strip (remove `<think>...</think>` before matching) | keep.
    normalize_regexes: removed from both texts before normalized match.
    no_chat_template: error (refuse such a checkpoint) | plain (each prompt turn, then a newline).
    contracts: per regime, a ContractConfig.
    calibration_bins: confidence bin edges from 0.0 to 1.0 (the seeds' bins by default).
    length_buckets: prompt-length bucket edges in tokens (0-50, 50-100, 100-200, 200+).
    confidence_level: of every Wilson interval.
    composite_weights: weights of exact_match, likelihood (exp(-CE)), calibration (1 - ECE)
    and contract (pass rate); parts that do not exist for a suite are left out.

    backend: local (load the checkpoint here) | remote (generate through the inference
    server of `remote`, a RemoteConfig; docs/remote.md).

    Daemon keys (docs/evaluator.md): checkpoints, state_dir, last_k, settle_seconds,
    rescan_seconds, retry_attempts / retry_backoff_seconds (tries in all, first wait,
    doubling; failures of the inference server are retried without a limit, waiting at most
    retry_max_backoff_seconds), curriculum_min_share (floor share of each difficulty in the
    recommended mix).
    """

    listen_address: str = "127.0.0.1:9947"
    web_config_file: str = ""
    max_concurrent_scrapes: int = 8
    scrape_wait_seconds: float = 1.0
    openmetrics: bool = False
    gzip_level: int = 1
    checkpoints: str = "var/demo/checkpoints"
    data: str = "var/demo/data"
    files: list[str] = field(default_factory=list)
    state_dir: str = "var/evaluator"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = 32
    max_new_tokens: int = 64
    stop_strings: list[str] = field(default_factory=list)
    think: Literal["strip", "keep"] = "strip"
    normalize_regexes: list[str] = field(default_factory=list)
    no_chat_template: Literal["error", "plain"] = "error"
    contracts: dict[str, ContractConfig] = field(default_factory=dict)
    calibration_bins: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]
    )
    length_buckets: list[int] = field(default_factory=lambda: [0, 50, 100, 200])
    confidence_level: float = 0.95
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    composite_weights: dict[str, float] = field(
        default_factory=lambda: {
            "exact_match": 0.6,
            "likelihood": 0.2,
            "calibration": 0.1,
            "contract": 0.1,
        }
    )
    last_k: int = 5
    settle_seconds: float = 2.0
    rescan_seconds: float = 30.0
    retry_attempts: int = 3
    retry_backoff_seconds: float = 30.0
    retry_max_backoff_seconds: float = 1800.0
    curriculum_min_share: float = 0.1
    backend: Literal["local", "remote"] = "local"
    remote: RemoteConfig = field(default_factory=RemoteConfig)


@dataclass
class PredictionsConfig:
    """Sample predictions kept for every evaluated checkpoint (docs/predictions.md).

    enabled: record at all. sample_size / seed: the fixed sample, the same examples at every
    checkpoint. record_failed: also every wrong answer, at most max_failed per checkpoint.
    frequency: checkpoint (every one) | steps (every every_n_steps) | epoch (first of each).
    store_url: "" = SQLite under evaluator.state_dir, a sqlite:///path, or postgresql://...
    (no password here: PGPASSFILE / PGPASSWORD). spool_dir: where rows wait while the store
    is down ("" = <evaluator.state_dir>/predictions_spool). retention_days: older rows are
    deleted, written first as JSONL to export_dir when it is set. max_text_chars: each text
    is cut to this length. connect_timeout_seconds: of the store.
    """

    enabled: bool = True
    sample_size: int = 20
    seed: int = 0
    record_failed: bool = False
    max_failed: int = 200
    frequency: Literal["checkpoint", "steps", "epoch"] = "checkpoint"
    every_n_steps: int = 100
    store_url: str = ""
    spool_dir: str = ""
    retention_days: float = 30.0
    export_dir: str = ""
    max_text_chars: int = 4000
    connect_timeout_seconds: float = 5.0


@dataclass
class StackConfig:
    """`make up` / `tunewatch up`: the local stack on 127.0.0.1, data under `data_dir`."""

    data_dir: str = "var"
    prometheus_config: str = "prometheus/prometheus.yml"
    alertmanager_config: str = "alertmanager/alertmanager.yml"
    prometheus_port: int = 9090
    alertmanager_port: int = 9093
    node_exporter_port: int = 9100
    webhook_port: int = 9948
    scrape_interval_seconds: int = 5
    prometheus_bin: str = "prometheus"
    alertmanager_bin: str = "prometheus-alertmanager"
    node_exporter_bin: str = "prometheus-node-exporter"
    ready_timeout_seconds: float = 60.0
    status_interval_seconds: float = 2.0


@dataclass
class DemoConfig:
    """The built-in demo workload: a tiny real model trained on CPU."""

    enabled: bool = True
    max_steps: int = 600
    save_steps: int = 50
    seed: int = 0
    step_delay_seconds: float = 0.1
    output_dir: str = "var/demo"
    degrade_at_step: int = 300
    degrade_noise: float = 1.0
    degrade_pause_seconds: float = 180.0


@dataclass
class Config:
    """The whole of tunewatch.yml."""

    run: str = "default"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "logfmt", "json"] = "text"
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    predictions: PredictionsConfig = field(default_factory=PredictionsConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    source: str = field(default="(defaults)", metadata={"internal": True})
