"""One YAML configuration for every tunewatch process, with environment overrides.

Why one file: the trainer, the sidecar, the host exporter and the evaluator of one run must
agree on names (the run label, directories, ports). Each process reads the same
`tunewatch.yml` (its path from `--config` or `TUNEWATCH_CONFIG`) and only the sections it
needs. Every key has a documented default, so an absent file is a valid configuration.

Environment overrides: a name with a double underscore is configuration,
`TUNEWATCH_<SECTION>__<KEY>` (one `__` between levels: `TUNEWATCH_EVALUATOR__REMOTE__URL` is
three), the value parsed as a YAML scalar, e.g. `TUNEWATCH_EVALUATOR__BATCH_SIZE=32`; an unknown
section or key there is an error naming the variable and its value. Three single names are
read: `TUNEWATCH_RUN` (the run label, fixed by the design), `TUNEWATCH_LOG_LEVEL` and
`TUNEWATCH_CONFIG` (the file). Every other `TUNEWATCH_*` name is ignored. Why scoped: users
export variables of the same prefix for other tools (compose's `TUNEWATCH_REMOTE_URL`, the
bootstrap's `TUNEWATCH_TORCH_VERSION`); those must never break a command.

Validation happens once at start; each error names the key (and the file and line where the
value came from), so a typo is found before a long run, not after.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

ENV_PREFIX = "TUNEWATCH_"
ENV_CONFIG_PATH = "TUNEWATCH_CONFIG"
ENV_LEVEL_SEPARATOR = "__"
# The single (separator-free) names that are configuration; every other one is ignored.
ENV_SINGLE_NAMES = {"TUNEWATCH_RUN": "run", "TUNEWATCH_LOG_LEVEL": "log_level"}
DEFAULT_CONFIG_NAME = "tunewatch.yml"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it came from."""


# --------------------------------------------------------------------------- sections


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


# --------------------------------------------------------------------------- validation


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class _Validator:
    """Turns plain YAML data into typed dataclasses, collecting every error."""

    def __init__(self, lines: dict[str, int], source: str,
                 env: EnvOverrides | None = None) -> None:
        self.lines = lines
        self.source = source
        self.env = env or EnvOverrides()
        self.errors: list[str] = []

    def error(self, key: str, message: str) -> None:
        line = self.lines.get(key)
        origin = None if line else self.env.origin_of(key)
        where = origin or (f"{self.source}:{line}" if line else self.source)
        self.errors.append(f"{where}: key '{key}': {message}")

    def build(self, cls: type, data: Any, key: str) -> Any:
        if not isinstance(data, dict):
            self.error(key or "(top level)", f"expected a mapping, got {_describe(data)}")
            return cls()
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for name, raw in data.items():
            sub = f"{key}.{name}" if key else str(name)
            if name not in known:
                choices = ", ".join(sorted(known))
                self.error(sub, f"unknown key (known here: {choices})")
                continue
            values[name] = self.convert(hints[name], raw, sub)
        return cls(**values)

    def convert(self, tp: Any, raw: Any, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if _is_dataclass_type(tp):
            return self.build(tp, raw, key)
        if origin is Literal:
            if raw not in args:
                self.error(key, f"expected one of {list(args)}, got {_describe(raw)}")
                return args[0]
            return raw
        if origin in (typing.Union, types.UnionType):
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self.error(key, f"expected a list, got {_describe(raw)}")
                return []
            return [self.convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(raw)]
        if origin is dict:
            if not isinstance(raw, dict):
                self.error(key, f"expected a mapping, got {_describe(raw)}")
                return {}
            return {str(k): self.convert(args[1], v, f"{key}.{k}") for k, v in raw.items()}
        return self.scalar(tp, raw, key)

    def scalar(self, tp: Any, raw: Any, key: str) -> Any:
        if tp is bool:
            if not isinstance(raw, bool):
                self.error(key, f"expected true or false, got {_describe(raw)}")
                return False
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.error(key, f"expected an integer, got {_describe(raw)}")
                return 0
            return raw
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.error(key, f"expected a number, got {_describe(raw)}")
                return 0.0
            return float(raw)
        if tp is str:
            if raw is None:
                return ""
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                self.error(key, f"expected a string, got {_describe(raw)}")
                return ""
            return str(raw)
        return raw


COMPOSITE_PARTS = frozenset({"exact_match", "likelihood", "calibration", "contract"})


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _server_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """Every metrics server needs room for at least one scrape and a positive timeout."""
    sections = {"exporter": cfg.exporter, "training": cfg.training, "evaluator": cfg.evaluator}
    checks = [(f"{name}.max_concurrent_scrapes", sec.max_concurrent_scrapes >= 1,
               "must be at least 1") for name, sec in sections.items()]
    checks += [(f"{name}.scrape_wait_seconds", sec.scrape_wait_seconds >= 0, "must be >= 0")
               for name, sec in sections.items()]
    checks += [(f"{name}.gzip_level", 0 <= sec.gzip_level <= 9,
                "must be 0 (never compress) to 9") for name, sec in sections.items()]
    checks.append(("exporter.collector_timeout_seconds",
                   cfg.exporter.collector_timeout_seconds > 0, "must be above 0"))
    checks.append(("exporter.process_max_matches", cfg.exporter.process_max_matches >= 1,
                   "must be at least 1"))
    for i, target in enumerate(cfg.exporter.processes):
        ways = [bool(target.pid_file), bool(target.process_name), bool(target.cmdline_pattern)]
        checks.append((f"exporter.processes[{i}]", bool(target.name) and sum(ways) == 1,
                       "needs a name and exactly one of pid_file, process_name, "
                       "cmdline_pattern"))
        checks.append((f"exporter.processes[{i}].cmdline_pattern",
                       _compiles(target.cmdline_pattern),
                       "must be a valid Python regular expression"))
    return checks


PREDICTION_LIMITS = {"sample_size": 1000, "max_failed": 5000, "max_text_chars": 100_000}


def _predictions_checks(pr: PredictionsConfig) -> list[tuple[str, bool, str]]:
    """Limits that keep recording cheap (issue 9: under 2% of an evaluation)."""
    return [
        *[(f"predictions.{key}", 1 <= getattr(pr, key) <= top, f"must be in [1, {top}]")
          for key, top in PREDICTION_LIMITS.items()],
        ("predictions.every_n_steps", pr.every_n_steps >= 1, "must be at least 1"),
        ("predictions.retention_days", pr.retention_days > 0, "must be above 0"),
        ("predictions.connect_timeout_seconds", pr.connect_timeout_seconds > 0,
         "must be above 0"),
        ("predictions.store_url",
         pr.store_url == "" or pr.store_url.startswith(("sqlite:///", "postgresql://",
                                                         "postgres://")),
         "must be empty (SQLite under evaluator.state_dir), sqlite:///PATH or postgresql://..."),
    ]


def _remote_checks(ev: EvaluatorConfig) -> list[tuple[str, bool, str]]:
    """The inference server settings: a URL where one is used, positive times and counts."""
    rc = ev.remote
    needs_url = ev.backend == "remote" or rc.deploy_best
    checks = [
        ("evaluator.remote.url",
         (not needs_url or bool(rc.url)) and (rc.url == "" or rc.url.startswith(
             ("http://", "https://"))),
         "must be an http:// or https:// URL (needed by backend: remote and deploy_best)"),
        ("evaluator.remote.deploy_best",
         not (rc.deploy_best and ev.backend == "remote" and not rc.activate),
         "with backend: remote needs evaluator.remote.activate: true (otherwise every "
         "checkpoint but the deployed one would be refused as the wrong model)"),
        ("evaluator.remote.model_id", _template_ok(rc.model_id),
         "must be a template using only {run}, {checkpoint} and {step}, with {checkpoint} or"
         " {step} in it (each checkpoint needs its own id)"),
        ("evaluator.remote.request_retries", rc.request_retries >= 1, "must be at least 1"),
        ("evaluator.remote.max_parallel_jobs", rc.max_parallel_jobs >= 1, "must be at least 1"),
        ("evaluator.remote.retry_backoff_seconds", rc.retry_backoff_seconds >= 0,
         "must be >= 0"),
        ("evaluator.remote.poll_max_seconds", rc.poll_max_seconds >= rc.poll_initial_seconds,
         "must be >= poll_initial_seconds"),
    ]
    checks += [(f"evaluator.remote.{key}", getattr(rc, key) > 0, "must be above 0")
               for key in ("request_timeout_seconds", "job_timeout_seconds",
                           "poll_initial_seconds")]
    return checks


def _template_ok(template: str) -> bool:
    """Formats with the values model_id_for passes (step may be empty) and names a checkpoint."""
    try:
        template.format(run="r", checkpoint="c", step="")
        template.format(run="r", checkpoint="c", step=1)
    except (KeyError, IndexError, ValueError):
        return False
    return "{checkpoint}" in template or "{step}" in template


def remote_errors(ev: EvaluatorConfig) -> list[str]:
    """The evaluator.remote rules broken by `ev` (for settings changed by flags after
    loading), each as 'key: message'."""
    return [f"{key}: {message}" for key, ok, message in _remote_checks(ev) if not ok]


def _positive_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """Range rules that types alone cannot express: (key, ok, message)."""
    ev = cfg.evaluator
    bins = ev.calibration_bins
    return [
        *_server_checks(cfg),
        ("demo.degrade_at_step",
         cfg.demo.degrade_at_step >= 0 and cfg.demo.degrade_at_step % max(
             cfg.demo.save_steps, 1) == 0,
         "must be 0 (off) or a multiple of demo.save_steps"),
        ("demo.degrade_pause_seconds", cfg.demo.degrade_pause_seconds >= 0, "must be >= 0"),
        ("training.bind_retry_seconds", cfg.training.bind_retry_seconds > 0, "must be > 0"),
        ("training.max_logged_metrics", cfg.training.max_logged_metrics >= 0, "must be >= 0"),
        ("evaluator.batch_size", ev.batch_size >= 1, "must be at least 1"),
        ("evaluator.max_new_tokens", ev.max_new_tokens >= 1, "must be at least 1"),
        ("evaluator.last_k", ev.last_k >= 1, "must be at least 1"),
        ("evaluator.settle_seconds", ev.settle_seconds >= 0, "must be >= 0"),
        ("evaluator.rescan_seconds", ev.rescan_seconds > 0, "must be > 0"),
        ("evaluator.retry_attempts", ev.retry_attempts >= 1, "must be at least 1"),
        ("evaluator.retry_backoff_seconds", ev.retry_backoff_seconds >= 0, "must be >= 0"),
        ("evaluator.retry_max_backoff_seconds",
         ev.retry_max_backoff_seconds >= ev.retry_backoff_seconds,
         "must be >= retry_backoff_seconds"),
        (
            "evaluator.curriculum_min_share",
            0.0 <= ev.curriculum_min_share <= 1.0,
            "must be in [0, 1]",
        ),
        (
            "evaluator.calibration_bins",
            len(bins) >= 2 and bins[0] == 0.0 and bins[-1] == 1.0 and bins == sorted(bins),
            "must rise from 0.0 to 1.0 with at least two edges",
        ),
        (
            "evaluator.length_buckets",
            bool(ev.length_buckets) and ev.length_buckets == sorted(set(ev.length_buckets)),
            "must be distinct rising token counts",
        ),
        ("evaluator.confidence_level", 0.5 < ev.confidence_level < 1.0, "must be in (0.5, 1)"),
        (
            "evaluator.normalize_regexes",
            all(_compiles(r) for r in ev.normalize_regexes),
            "every entry must be a valid Python regular expression",
        ),
        (
            "evaluator.stop_strings",
            all(ev.stop_strings),
            "entries must be non-empty strings",
        ),
        (
            "evaluator.composite_weights",
            set(ev.composite_weights) <= COMPOSITE_PARTS
            and all(w >= 0 for w in ev.composite_weights.values()),
            f"keys must be among {sorted(COMPOSITE_PARTS)}, weights >= 0",
        ),
        (
            "evaluator.length_buckets",
            not ev.length_buckets or ev.length_buckets[0] == 0,
            "must start at 0",
        ),
        (
            "evaluator.regression.max_p_value",
            0.0 < ev.regression.max_p_value < 1.0,
            "must be in (0, 1)",
        ),
        *_predictions_checks(cfg.predictions),
        *_remote_checks(ev),
        ("exporter.max_concurrent_scrapes", cfg.exporter.max_concurrent_scrapes >= 1, ">= 1"),
        ("exporter.collector_timeout_seconds", cfg.exporter.collector_timeout_seconds > 0, "> 0"),
        ("demo.save_steps", cfg.demo.save_steps >= 1, "must be at least 1"),
        ("demo.max_steps", cfg.demo.max_steps >= cfg.demo.save_steps, "must be >= save_steps"),
    ]


# --------------------------------------------------------------------------- loading


def _line_map(text: str) -> dict[str, int]:
    """Map dotted keys to the 1-based line of their value in the YAML text."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = f"{prefix}[{i}]"
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines


@dataclass
class EnvOverrides:
    """The configuration found in the environment: a nested tree, and for each dotted key
    the variable that set it (`NAME='value'`), so an error blames the variable, not the file."""

    tree: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def origin_of(self, key: str) -> str | None:
        """The variable behind `key`, or behind a key below it (an unknown section)."""
        if key in self.origins:
            return self.origins[key]
        below = [origin for dotted, origin in self.origins.items()
                 if dotted.startswith(key + ".")]
        return below[0] if below else None


def _env_value(value: str) -> Any:
    """A variable's value read as a YAML scalar (`32` an int, `true` a bool), else as text."""
    if value == "":
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _env_key(name: str) -> list[str] | None:
    """The config path a variable names: None when the variable is not configuration."""
    if name in ENV_SINGLE_NAMES:
        return [ENV_SINGLE_NAMES[name]]
    if not name.startswith(ENV_PREFIX) or ENV_LEVEL_SEPARATOR not in name:
        return None
    return [part.lower() for part in name[len(ENV_PREFIX):].split(ENV_LEVEL_SEPARATOR)]


def _env_overrides(environ: typing.Mapping[str, str]) -> EnvOverrides:
    """Configuration from `TUNEWATCH_SECTION__KEY` variables and the single names read."""
    found = EnvOverrides()
    for name in sorted(environ):
        parts = _env_key(name)
        if parts is None:
            continue
        value = environ[name]
        origin = f"environment variable {name}={value!r}"
        if not all(parts):
            found.errors.append(f"{origin}: empty level in the name (one '__' between levels, "
                                "e.g. TUNEWATCH_EVALUATOR__REMOTE__URL)")
            continue
        node = found.tree
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                found.errors.append(f"{origin}: key '{prefix}' is set by "
                                    f"{found.origins[prefix]} to a single value")
                break
            node = child
        else:
            if isinstance(node.get(parts[-1]), dict):
                found.errors.append(f"{origin}: key '{'.'.join(parts)}' is a section; other "
                                    "variables set keys inside it")
                continue
            node[parts[-1]] = _env_value(value)
            found.origins[".".join(parts)] = origin
    return found


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        data = yaml.safe_load(text)
        lines = _line_map(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level, got {_describe(data)}")
    return data, lines


def find_config_path(explicit: str | None, environ: typing.Mapping[str, str]) -> Path | None:
    """The config file to use: --config, then TUNEWATCH_CONFIG, then ./tunewatch.yml."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG_PATH):
        return Path(environ[ENV_CONFIG_PATH])
    local = Path(DEFAULT_CONFIG_NAME)
    return local if local.is_file() else None


def load_config(
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None
) -> Config:
    """Load, merge environment overrides and validate; raises ConfigError listing all errors."""
    environ = os.environ if environ is None else environ
    chosen = find_config_path(str(path) if path else None, environ)
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "(defaults)"
    if chosen is not None:
        data, lines = _read_yaml(chosen)
        source = str(chosen)
    env = _env_overrides(environ)
    merged = _merge(data, env.tree)
    validator = _Validator(lines, source, env)
    validator.errors.extend(env.errors)
    for key in _flatten_keys(env.tree):
        validator.lines.pop(key, None)
    cfg = validator.build(Config, merged, "")
    for key, ok, message in _positive_checks(cfg) if not validator.errors else []:
        if not ok:
            validator.error(key, message)
    if validator.errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(validator.errors))
    cfg.source = source
    return cfg


def _flatten_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        keys.append(dotted)
        if isinstance(value, dict):
            keys.extend(_flatten_keys(value, dotted))
    return keys


def as_dict(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data (for `tunewatch config`)."""
    data = dataclasses.asdict(cfg)
    data.pop("source", None)
    return data
