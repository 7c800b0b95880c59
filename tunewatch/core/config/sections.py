"""The sections of tunewatch.yml as typed dataclasses, one per process or concern.

Why dataclasses with defaults: every key has a documented default, so an absent file is a
valid configuration, and the loader (loader.py) can check each value against its type
annotation. Why each numeric key declares its range here, next to its default (`at_least`,
`positive`, `in_range`, `interval`): a key added without one is seen at once (a test walks
the schema), and one generic check (checks.py) applies them all, each key once. Rules that
span keys (poll_max_seconds against poll_initial_seconds, ...) live in checks.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

# The metadata key under which a numeric field declares its Range.
RANGE = "range"
# Limits that keep recording predictions cheap (issue 9: under 2% of an evaluation).
PREDICTION_LIMITS = {"sample_size": 1000, "max_failed": 5000, "max_text_chars": 100_000}
MAX_PORT = 65535
# numpy's seed (Trainer's set_seed seeds it) takes 32 bits.
MAX_SEED = 2**32 - 1
MAX_GZIP_LEVEL = 9

Number = TypeVar("Number", int, float)


def _number(value: float) -> str:
    """`1` rather than `1.0` in a message, `0.05` as written."""
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: low to high, either end open (excluded) or absent.

    pacing: the key paces a loop or a retry, so 0 would spin (always refused). note: what
    an edge value means ("0: off") or why the range is what it is, shown in the error.
    integer: the key is an int (the message says "at least 1" rather than ">= 1").
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    pacing: bool = False
    integer: bool = False
    note: str = ""

    def contains(self, value: float | Mapping[str, float]) -> bool:
        """Within the range and finite (NaN passes every comparison, so it is refused); for
        a mapping key (name -> number, e.g. exporter.gpu_peak_flops), every value of it."""
        if isinstance(value, Mapping):
            return all(self.contains(item) for item in value.values())
        if value != value or value in (float("inf"), float("-inf")):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open
                                     else value <= self.high)

    def message(self) -> str:
        """The rule in words, as the error message states it."""
        text = self._bounds()
        return f"{text} ({self.note})" if self.note else text

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"must be in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            if self.low_open:
                return f"must be above {_number(self.low)}"
            return (f"must be at least {_number(self.low)}" if self.integer
                    else f"must be >= {_number(self.low)}")
        if self.high is not None:
            return (f"must be below {_number(self.high)}" if self.high_open
                    else f"must be at most {_number(self.high)}")
        return "must be a finite number"


def _ranged(default: Number, declared: Range) -> Number:
    return field(default=default, metadata={RANGE: declared})


def at_least(default: Number, low: float, note: str = "") -> Number:
    """A key of `low` or more."""
    return _ranged(default, Range(low=low, integer=isinstance(default, int), note=note))


def positive(default: Number, note: str = "") -> Number:
    """A key above 0 (a timeout, a size, ...), 0 itself refused."""
    return _ranged(default, Range(low=0, low_open=True, integer=isinstance(default, int),
                                  note=note))


def in_range(default: Number, low: float, high: float, note: str = "", *,
             open_ends: bool = False) -> Number:
    """A key from `low` to `high`, both ends included (or both excluded: `open_ends`)."""
    return _ranged(default, Range(low=low, high=high, low_open=open_ends, high_open=open_ends,
                                  integer=isinstance(default, int), note=note))


def interval(default: Number, paces: str) -> Number:
    """A key that paces a loop or a retry: above 0, since 0 would spin."""
    return _ranged(default, Range(low=0, low_open=True, pacing=True,
                                  integer=isinstance(default, int),
                                  note=f"it paces {paces}; 0 would spin"))


def port_number(default: int) -> int:
    """A TCP port (the stack checks each one by connecting to it, so 0 is refused)."""
    return in_range(default, 1, MAX_PORT)


def seed_value(default: int) -> int:
    """A random seed, within what every seeded library takes."""
    return in_range(default, 0, MAX_SEED)


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
class ServerSection:
    """What every metrics server's section holds (exporters/server.py reads it): written
    once here, each section giving its own port (listen_address keeps its place first)."""

    listen_address: str = ""
    web_config_file: str = ""
    max_concurrent_scrapes: int = at_least(8, 1)
    scrape_wait_seconds: float = at_least(
        1.0, 0, "0: a scrape beyond max_concurrent_scrapes gets HTTP 503 at once")
    openmetrics: bool = False
    gzip_level: int = in_range(1, 0, MAX_GZIP_LEVEL, "0: never compress")


@dataclass
class ExporterConfig(ServerSection):
    """`tunewatch exporter`: the host exporter (GPU, process and files collectors)."""

    listen_address: str = "127.0.0.1:9945"
    collector_timeout_seconds: float = positive(5.0)
    collectors: dict[str, bool] = field(
        default_factory=lambda: {"gpu": True, "process": True, "files": True}
    )
    processes: list[ProcessTarget] = field(default_factory=list)
    process_max_matches: int = at_least(32, 1)
    checkpoint_dirs: list[str] = field(default_factory=list)
    queue_dirs: list[QueueDir] = field(default_factory=list)
    gpu_max_processes: int = at_least(16, 0, "0: processes counted, none listed")
    gpu_sample_interval_seconds: float = interval(1.0, "the GPU memory sampler")
    gpu_readings_file: str = ""
    # NVML board name -> dense BF16 peak FLOPS; overrides or extends the built-in table
    # (exporters/collectors/gpu/peak_flops.py). The range applies to every value.
    gpu_peak_flops: dict[str, float] = field(default_factory=dict, metadata={
        RANGE: Range(low=0, low_open=True, note="every value: a board's peak FLOPS")})


@dataclass
class TrainingConfig(ServerSection):
    """Training metrics: the in-process callback and `tunewatch training-sidecar`."""

    listen_address: str = "127.0.0.1:9946"
    status_file: str = "status/training_status.json"
    queue_dirs: list[QueueDir] = field(default_factory=list)
    stale_after_seconds: float = positive(300.0)
    crash_grace_seconds: float = at_least(30.0, 0, "0: exit at once")
    # The callback never stops a run: a port it cannot bind is retried this often meanwhile.
    bind_retry_seconds: float = interval(10.0, "the retries of a port not bound")
    # Distinct names of the `metric` label (logged values; evaluation values); the rest are
    # counted as dropped.
    max_logged_metrics: int = at_least(64, 0, "0: every name counted as dropped")


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
class DerivedLabel:
    """Where a messages-only suite's `pattern`, `regime` or `source` comes from (a record's
    own field always wins; docs/evaluation.md).

    take: file (the suite file's name without `.jsonl`) | id (the example's `id` field).
    regex: searched in it; the group named `value`, else group 1, else the whole match is
    the label. Empty: the whole name. A name it does not match keeps `unspecified`.
    """

    take: Literal["file", "id"] = "file"
    regex: str = ""


@dataclass
class RegressionConfig:
    """When a drop counts as a regression (DESIGN section 9)."""

    min_drop_overall: float = in_range(0.05, 0, 1, "a share of the examples")
    min_drop_per_difficulty: float = in_range(0.10, 0, 1, "a share of the examples")
    max_p_value: float = in_range(0.05, 0, 1, open_ends=True)
    loss_rise_ratio: float = at_least(0.15, 0)


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
    request_timeout_seconds: float = positive(10.0)
    request_retries: int = at_least(3, 1, "tries in all")
    retry_backoff_seconds: float = interval(0.5, "the retries of a failed request")
    job_timeout_seconds: float = positive(120.0)
    poll_initial_seconds: float = interval(0.05, "job polling")
    poll_max_seconds: float = interval(2.0, "job polling")
    max_parallel_jobs: int = at_least(8, 1)

    def model_id_for(self, run: str, checkpoint: str, step: int | None) -> str:
        """A checkpoint's id on the server: `model_id` formatted with the run, the
        checkpoint's directory name and its step ("" when unknown). Why here: the remote
        backend and the configuration check must format it the same way."""
        return self.model_id.format(run=run, checkpoint=checkpoint,
                                    step="" if step is None else step)


@dataclass
class EvaluatorConfig(ServerSection):
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
    derive_labels: per label (pattern, regime, source), a DerivedLabel read from the file
    name or the id where records lack the field. max_patterns: distinct patterns published
    (the most frequent; the rest fold into `other`).
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
    checkpoints: str = "var/demo/checkpoints"
    data: str = "var/demo/data"
    files: list[str] = field(default_factory=list)
    state_dir: str = "var/evaluator"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = at_least(32, 1)
    max_new_tokens: int = at_least(64, 1)
    stop_strings: list[str] = field(default_factory=list)
    think: Literal["strip", "keep"] = "strip"
    normalize_regexes: list[str] = field(default_factory=list)
    no_chat_template: Literal["error", "plain"] = "error"
    contracts: dict[str, ContractConfig] = field(default_factory=dict)
    calibration_bins: list[float] = field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0]
    )
    length_buckets: list[int] = field(default_factory=lambda: [0, 50, 100, 200])
    derive_labels: dict[str, DerivedLabel] = field(default_factory=dict)
    max_patterns: int = at_least(20, 1, "the other patterns fold into `other`")
    confidence_level: float = in_range(0.95, 0.5, 1, open_ends=True)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    composite_weights: dict[str, float] = field(
        default_factory=lambda: {
            "exact_match": 0.6,
            "likelihood": 0.2,
            "calibration": 0.1,
            "contract": 0.1,
        }
    )
    last_k: int = at_least(5, 1)
    settle_seconds: float = at_least(2.0, 0, "0: complete as soon as seen")
    rescan_seconds: float = interval(30.0, "the rescans of the checkpoint directory")
    retry_attempts: int = at_least(3, 1, "tries in all")
    retry_backoff_seconds: float = interval(30.0, "the retries of a failed evaluation")
    retry_max_backoff_seconds: float = interval(
        1800.0, "the unlimited retries of inference server failures")
    curriculum_min_share: float = in_range(0.1, 0, 1)
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
    sample_size: int = in_range(20, 1, PREDICTION_LIMITS["sample_size"])
    seed: int = seed_value(0)
    record_failed: bool = False
    max_failed: int = in_range(200, 1, PREDICTION_LIMITS["max_failed"])
    frequency: Literal["checkpoint", "steps", "epoch"] = "checkpoint"
    every_n_steps: int = at_least(100, 1)
    store_url: str = ""
    spool_dir: str = ""
    retention_days: float = positive(30.0)
    export_dir: str = ""
    max_text_chars: int = in_range(4000, 1, PREDICTION_LIMITS["max_text_chars"])
    connect_timeout_seconds: float = positive(5.0)


@dataclass
class StackConfig:
    """`make up` / `tunewatch up`: the local stack on 127.0.0.1, data under `data_dir`.

    Grafana runs when one of `grafana_bins` is on PATH (the first found; [] never), with its
    data under `<data_dir>/grafana`, the provisioning rendered from `grafana_provisioning`
    and the dashboards read from `grafana_dashboards`; `grafana_home` is its home directory
    ("" = found from the binary). PostgreSQL (`postgres_port`) runs with it, for the
    Predictions dashboard.
    """

    data_dir: str = "var"
    prometheus_config: str = "prometheus/prometheus.yml"
    alertmanager_config: str = "alertmanager/alertmanager.yml"
    prometheus_port: int = port_number(9090)
    alertmanager_port: int = port_number(9093)
    node_exporter_port: int = port_number(9100)
    webhook_port: int = port_number(9948)
    grafana_port: int = port_number(3000)
    postgres_port: int = port_number(5432)
    scrape_interval_seconds: int = interval(5, "Prometheus' scrapes")
    prometheus_bin: str = "prometheus"
    alertmanager_bin: str = "prometheus-alertmanager"
    node_exporter_bin: str = "prometheus-node-exporter"
    grafana_bins: list[str] = field(default_factory=lambda: ["grafana", "grafana-server"])
    grafana_home: str = ""
    grafana_provisioning: str = "grafana/provisioning"
    grafana_dashboards: str = "grafana/dashboards"
    ready_timeout_seconds: float = positive(60.0)
    stop_timeout_seconds: float = positive(10.0)
    status_interval_seconds: float = interval(2.0, "the status display")


@dataclass
class DemoConfig:
    """The built-in demo workload: a tiny real model, trained on CPU unless `device` says.

    device: auto trains on a CUDA GPU when torch sees one (so the demo run holds GPU memory
    and its MFU and energy per token are live), else on CPU; cpu or cuda force one.
    """

    enabled: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int = at_least(600, 1)
    save_steps: int = at_least(50, 1)
    seed: int = seed_value(0)
    step_delay_seconds: float = at_least(0.1, 0, "0: full speed")
    output_dir: str = "var/demo"
    degrade_at_step: int = at_least(300, 0, "0: off")
    degrade_noise: float = positive(
        1.0, "a copy without noise would not regress; degrade_at_step: 0 turns it off")
    degrade_pause_seconds: float = at_least(180.0, 0, "0: no pause")


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
