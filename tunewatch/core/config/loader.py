"""Reading tunewatch.yml: the file, the environment overrides, validation, one error listing
every problem.

Why one loader for every process: the trainer, the sidecar, the host exporter and the
evaluator of one run must agree on names (the run label, directories, ports), so each reads
the same file (from `--config`, then `TUNEWATCH_CONFIG`, then ./tunewatch.yml).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from tunewatch.core.config.checks import config_errors
from tunewatch.core.config.environment import ENV_CONFIG_PATH, add_flags, env_overrides
from tunewatch.core.config.sections import Config
from tunewatch.core.config.validate import Validator, describe
from tunewatch.core.errors import ConfigError

DEFAULT_CONFIG_NAME = "tunewatch.yml"


def _line_map(text: str) -> tuple[dict[str, int], list[str]]:
    """Map dotted keys to the 1-based line of their value in the YAML text; and each key
    given twice in one mapping, as "LINE: ...".

    Why duplicates are errors: YAML loaders keep the last of two equal keys without a word,
    so a section appended to the shipped file (a second `evaluator:`) would silently drop
    every setting of the first.
    """
    lines: dict[str, int] = {}
    twice: list[str] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in lines:
                    twice.append(f"{line}: key '{key}' is given twice (first on line "
                                 f"{lines[key]}); merge the two")
                lines[key] = line
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = f"{prefix}[{i}]"
                lines[key] = item.start_mark.line + 1
                walk(item, key)

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines, twice


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
        lines, twice = _line_map(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark else "?"
        raise ConfigError(f"{path}:{line}: invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if twice:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(
            f"{path}:{problem}" for problem in twice))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level, got {describe(data)}")
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
    path: str | Path | None = None, environ: typing.Mapping[str, str] | None = None,
    flags: typing.Mapping[str, tuple[str, Any]] | None = None,
) -> Config:
    """Load, merge environment overrides and command line `flags` ({dotted key: (flag,
    value)}, over the environment) and validate; raises ConfigError listing all errors."""
    environ = os.environ if environ is None else environ
    chosen = find_config_path(str(path) if path else None, environ)
    data: dict[str, Any] = {}
    lines: dict[str, int] = {}
    source = "(defaults)"
    if chosen is not None:
        data, lines = _read_yaml(chosen)
        source = str(chosen)
    env = env_overrides(environ)
    add_flags(env, flags or {})
    merged = _merge(data, env.tree)
    validator = Validator(lines, source, env)
    validator.errors.extend(env.errors)
    for key in _flatten_keys(env.tree):
        validator.lines.pop(key, None)
    for key in [k for k in validator.lines if env.above(k) is not None]:
        del validator.lines[key]  # a list item of the file, under a key the env replaced
    cfg = validator.build(Config, merged, "")
    for key, message in config_errors(cfg) if not validator.errors else []:
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
