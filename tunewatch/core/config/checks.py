"""Range rules that types alone cannot express, as (key, ok, message) triples.

Why separate from the schema: the rules span sections (a server per process, the remote
settings against the backend), and `remote_errors` re-checks the remote rules after command
line flags changed the evaluator section.
"""

from __future__ import annotations

import re

from tunewatch.core.config.sections import (
    Config,
    EvaluatorConfig,
    PredictionsConfig,
    RemoteConfig,
)

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
    """Formats with the values the remote backend passes (step may be empty) and names a
    checkpoint; formatted by RemoteConfig.model_id_for, the one place that does it."""
    remote = RemoteConfig(model_id=template)
    try:
        remote.model_id_for("r", "c", None)
        remote.model_id_for("r", "c", 1)
    except (KeyError, IndexError, ValueError):
        return False
    return "{checkpoint}" in template or "{step}" in template


def remote_errors(ev: EvaluatorConfig) -> list[str]:
    """The evaluator.remote rules broken by `ev` (for settings changed by flags after
    loading), each as 'key: message'."""
    return [f"{key}: {message}" for key, ok, message in _remote_checks(ev) if not ok]


def positive_checks(cfg: Config) -> list[tuple[str, bool, str]]:
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
        ("demo.save_steps", cfg.demo.save_steps >= 1, "must be at least 1"),
        ("demo.max_steps", cfg.demo.max_steps >= cfg.demo.save_steps, "must be >= save_steps"),
    ]
