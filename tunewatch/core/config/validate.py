"""Plain YAML data to typed sections, collecting every error with the key and its origin.

Why collect rather than stop at the first: a user fixing a config file wants every mistake
in one run, each naming the file and line (or the environment variable) it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from tunewatch.core.config.environment import EnvOverrides


def describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


class Validator:
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
            self.error(key or "(top level)", f"expected a mapping, got {describe(data)}")
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
                self.error(key, f"expected one of {list(args)}, got {describe(raw)}")
                return args[0]
            return raw
        if origin in (typing.Union, types.UnionType):
            return raw
        if origin is list:
            if not isinstance(raw, list):
                self.error(key, f"expected a list, got {describe(raw)}")
                return []
            return [self.convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(raw)]
        if origin is dict:
            if not isinstance(raw, dict):
                self.error(key, f"expected a mapping, got {describe(raw)}")
                return {}
            return {str(k): self.convert(args[1], v, f"{key}.{k}") for k, v in raw.items()}
        return self.scalar(tp, raw, key)

    def scalar(self, tp: Any, raw: Any, key: str) -> Any:
        if tp is bool:
            if not isinstance(raw, bool):
                self.error(key, f"expected true or false, got {describe(raw)}")
                return False
            return raw
        if tp is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                self.error(key, f"expected an integer, got {describe(raw)}")
                return 0
            return raw
        if tp is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                self.error(key, f"expected a number, got {describe(raw)}")
                return 0.0
            return float(raw)
        if tp is str:
            if raw is None:
                return ""
            if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
                self.error(key, f"expected a string, got {describe(raw)}")
                return ""
            return str(raw)
        return raw
