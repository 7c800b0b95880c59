"""The checks types alone cannot express: each numeric key's declared range, and rules
across keys.

Why one generic range check: every numeric key declares its range next to its default
(sections.py), so the ranges are walked here rather than written out a second time, and
none is forgotten or checked twice. Why rules are separate and skip keys already in error:
a rule across keys (poll_max_seconds >= poll_initial_seconds) reads values whose own range
may be broken, and one bad value must give one error, not two. `remote_errors` re-checks
the evaluator.remote keys after command line flags changed the evaluator section.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

from tunewatch.core.config.sections import (
    RANGE,
    Config,
    EvaluatorConfig,
    PredictionsConfig,
    Range,
    RemoteConfig,
)

COMPOSITE_PARTS = frozenset({"exact_match", "likelihood", "calibration", "contract"})
DERIVED_LABELS = frozenset({"pattern", "regime", "source"})
REMOTE_PREFIX = "evaluator.remote"
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
URL_SCHEMES = ("http://", "https://")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A rule across keys. `key` is the key it reports; `uses` are the other keys it reads:
    when one of them already broke its range, the rule is not judged (one error, not two)."""

    key: str
    ok: bool
    message: str
    uses: tuple[str, ...] = ()


def range_errors(node: Any, prefix: str) -> list[tuple[str, str]]:
    """(dotted key, message) for every field of the dataclass `node`, and of the
    dataclasses nested in it, whose value is outside its declared Range."""
    errors: list[tuple[str, str]] = []
    for f in dataclasses.fields(node):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(node, f.name)
        declared: Range | None = f.metadata.get(RANGE)
        if declared is not None and not declared.contains(value):
            errors.append((key, declared.message()))
        errors.extend(_nested_range_errors(value, key))
    return errors


def _nested_range_errors(value: Any, key: str) -> list[tuple[str, str]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return range_errors(value, key)
    if isinstance(value, list):
        return [error for i, item in enumerate(value)
                for error in _nested_range_errors(item, f"{key}[{i}]")]
    if isinstance(value, dict):
        return [error for name, item in value.items()
                for error in _nested_range_errors(item, f"{key}.{name}")]
    return []


def _report(ranged: list[tuple[str, str]], rules: Iterable[Rule]) -> list[tuple[str, str]]:
    """Range errors, then the broken rules whose keys are not in error yet: each key once."""
    errors = dict(ranged)
    for rule in rules:
        if not rule.ok and rule.key not in errors and not any(u in errors for u in rule.uses):
            errors[rule.key] = rule.message
    return list(errors.items())


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


def _process_rules(cfg: Config) -> list[Rule]:
    """Each followed process has a name and exactly one way of being found."""
    rules = []
    for i, target in enumerate(cfg.exporter.processes):
        ways = [bool(target.pid_file), bool(target.process_name), bool(target.cmdline_pattern)]
        rules.append(Rule(f"exporter.processes[{i}]", bool(target.name) and sum(ways) == 1,
                          "needs a name and exactly one of pid_file, process_name, "
                          "cmdline_pattern"))
        rules.append(Rule(f"exporter.processes[{i}].cmdline_pattern",
                          _compiles(target.cmdline_pattern),
                          "must be a valid Python regular expression"))
    return rules


def _predictions_rules(pr: PredictionsConfig) -> list[Rule]:
    return [Rule("predictions.store_url",
                 pr.store_url == "" or pr.store_url.startswith(STORE_SCHEMES),
                 "must be empty (SQLite under evaluator.state_dir), sqlite:///PATH or "
                 "postgresql://...")]


def _remote_rules(ev: EvaluatorConfig) -> list[Rule]:
    """The inference server settings: a URL where one is used, an id per checkpoint."""
    rc = ev.remote
    needs_url = ev.backend == "remote" or rc.deploy_best
    return [
        Rule(f"{REMOTE_PREFIX}.url",
             (not needs_url or bool(rc.url)) and (rc.url == "" or rc.url.startswith(
                 URL_SCHEMES)),
             "must be an http:// or https:// URL (needed by backend: remote and deploy_best)"),
        Rule(f"{REMOTE_PREFIX}.deploy_best",
             not (rc.deploy_best and ev.backend == "remote" and not rc.activate),
             "with backend: remote needs evaluator.remote.activate: true (otherwise every "
             "checkpoint but the deployed one would be refused as the wrong model)"),
        Rule(f"{REMOTE_PREFIX}.model_id", _template_ok(rc.model_id),
             "must be a template using only {run}, {checkpoint} and {step}, with {checkpoint}"
             " or {step} in it (each checkpoint needs its own id)"),
        Rule(f"{REMOTE_PREFIX}.poll_max_seconds", rc.poll_max_seconds >= rc.poll_initial_seconds,
             "must be >= poll_initial_seconds", uses=(f"{REMOTE_PREFIX}.poll_initial_seconds",)),
    ]


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
    """The evaluator.remote keys broken in `ev` (for settings changed by flags after
    loading), each as 'key: message'."""
    found = _report(range_errors(ev.remote, REMOTE_PREFIX), _remote_rules(ev))
    return [f"{key}: {message}" for key, message in found]


def _evaluator_rules(ev: EvaluatorConfig) -> list[Rule]:
    """The evaluator's lists and mappings, and the backoff cap against its start."""
    bins = ev.calibration_bins
    buckets = ev.length_buckets
    weights = ev.composite_weights
    return [
        Rule("evaluator.retry_max_backoff_seconds",
             ev.retry_max_backoff_seconds >= ev.retry_backoff_seconds,
             "must be >= retry_backoff_seconds", uses=("evaluator.retry_backoff_seconds",)),
        Rule("evaluator.calibration_bins",
             len(bins) >= 2 and bins[0] == 0.0 and bins[-1] == 1.0 and bins == sorted(bins),
             "must rise from 0.0 to 1.0 with at least two edges"),
        Rule("evaluator.length_buckets",
             bool(buckets) and buckets[0] == 0 and buckets == sorted(set(buckets)),
             "must be distinct rising token counts starting at 0"),
        Rule("evaluator.normalize_regexes", all(_compiles(r) for r in ev.normalize_regexes),
             "every entry must be a valid Python regular expression"),
        Rule("evaluator.stop_strings", all(ev.stop_strings), "entries must be non-empty strings"),
        Rule("evaluator.derive_labels",
             set(ev.derive_labels) <= DERIVED_LABELS
             and all(_compiles(d.regex) for d in ev.derive_labels.values()),
             f"keys must be among {sorted(DERIVED_LABELS)}, every regex valid Python"),
        Rule("evaluator.composite_weights",
             set(weights) <= COMPOSITE_PARTS and all(w >= 0 for w in weights.values()),
             f"keys must be among {sorted(COMPOSITE_PARTS)}, weights >= 0"),
    ]


def _demo_rules(cfg: Config) -> list[Rule]:
    demo = cfg.demo
    return [
        Rule("demo.degrade_at_step", demo.degrade_at_step % max(demo.save_steps, 1) == 0,
             "must be 0 (off) or a multiple of demo.save_steps", uses=("demo.save_steps",)),
        Rule("demo.max_steps", demo.max_steps >= demo.save_steps, "must be >= save_steps",
             uses=("demo.save_steps",)),
    ]


def cross_rules(cfg: Config) -> list[Rule]:
    """Every rule across keys, lists and text values; ranges of single numbers are not here."""
    return [*_process_rules(cfg), *_evaluator_rules(cfg.evaluator),
            *_predictions_rules(cfg.predictions), *_remote_rules(cfg.evaluator),
            *_demo_rules(cfg)]


def config_errors(cfg: Config) -> list[tuple[str, str]]:
    """(dotted key, message) for every broken range and rule of `cfg`, each key once."""
    return _report(range_errors(cfg, ""), cross_rules(cfg))
