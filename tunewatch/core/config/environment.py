"""Configuration from environment variables: `TUNEWATCH_<SECTION>__<KEY>` and three single
names.

Why scoped: users export variables of the same prefix for other tools (compose's
`TUNEWATCH_REMOTE_URL`, the bootstrap's `TUNEWATCH_TORCH_VERSION`); only names with a double
underscore, and `TUNEWATCH_RUN` and `TUNEWATCH_LOG_LEVEL`, are configuration, so those never
break a command. Each value remembers its variable, so an error blames the variable.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

ENV_PREFIX = "TUNEWATCH_"
ENV_CONFIG_PATH = "TUNEWATCH_CONFIG"
ENV_LEVEL_SEPARATOR = "__"
# The single (separator-free) names that are configuration; every other one is ignored.
ENV_SINGLE_NAMES = {"TUNEWATCH_RUN": "run", "TUNEWATCH_LOG_LEVEL": "log_level"}


@dataclass
class EnvOverrides:
    """The configuration found in the environment: a nested tree, and for each dotted key
    the variable that set it (`NAME='value'`), so an error blames the variable, not the file."""

    tree: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def above(self, key: str) -> str | None:
        """The variable (or flag) whose value holds `key`: `exporter.queue_dirs[0].priority`
        inside a list given as TUNEWATCH_EXPORTER__QUEUE_DIRS's YAML value."""
        return next((origin for dotted, origin in self.origins.items()
                     if key.startswith((dotted + ".", dotted + "["))), None)

    def origin_of(self, key: str) -> str | None:
        """The variable behind `key`, behind a key above it (a list or mapping given as a
        YAML value: `exporter.queue_dirs[0].priority`), or below it (an unknown section)."""
        if key in self.origins:
            return self.origins[key]
        if (above := self.above(key)) is not None:
            return above
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


def add_flags(found: EnvOverrides, flags: typing.Mapping[str, tuple[str, Any]]) -> None:
    """Command line flags that set configuration keys (`--remote-url` sets
    evaluator.remote.url), over the environment: {dotted key: (flag, value)}.

    Why at load time: a rule that needs a key (deploy_best needs a URL) must see the flag's
    value, or a flag given to satisfy it is refused before it is read. Each value
    remembers its flag, so an error blames the flag.
    """
    for dotted, (flag, value) in flags.items():
        *parents, last = dotted.split(".")
        node = found.tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
        found.origins[dotted] = f"command line flag {flag}={value!r}"


def env_overrides(environ: typing.Mapping[str, str]) -> EnvOverrides:
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
