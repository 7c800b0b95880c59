"""Every numeric key declares its range, and one value out of it gives exactly one error.

Why generated from the schema rather than a hand list: a key added later without a range,
or a range checked in two places, must fail here without anyone remembering to add a case.
The out-of-range values come from each declared range (below its low end, above its high
end) and go through load_config as a user would write them: a YAML file, or a
TUNEWATCH_SECTION__KEY variable.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunewatch.core.config import (
    RANGE,
    Config,
    ConfigError,
    EvaluatorConfig,
    Range,
    load_config,
    remote_errors,
)

# Names that say a key paces a loop or a retry; such a key must be declared as pacing.
PACING_NAME = re.compile(r"interval|rescan|poll|backoff|bind_retry")
# The step below a low end or above a high end that an out-of-range value takes.
OUTSIDE_BY = 1


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _schema_fields(cls: type, prefix: str) -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted key, field, type) of every configuration field, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        yield key, f, hints[f.name]
        if _is_dataclass_type(hints[f.name]):
            yield from _schema_fields(hints[f.name], key)


def _is_number(tp: Any) -> bool:
    return tp in (int, float)


NUMERIC = [(key, f) for key, f, tp in _schema_fields(Config, "") if _is_number(tp)]


def _declared(f: dataclasses.Field[Any]) -> Range:
    declared = f.metadata.get(RANGE)
    assert isinstance(declared, Range), f"{f.name} declares no range"
    return declared


def _outside(declared: Range) -> list[float]:
    """A value just below the low end and one just above the high end, where they exist."""
    values: list[float] = []
    if declared.low is not None:
        values.append(declared.low if declared.low_open else declared.low - OUTSIDE_BY)
    if declared.high is not None:
        values.append(declared.high if declared.high_open else declared.high + OUTSIDE_BY)
    return [int(v) if declared.integer else float(v) for v in values]


def _ranged_cases() -> list[tuple[str, float]]:
    return [(key, value) for key, f in NUMERIC if RANGE in f.metadata
            for value in _outside(f.metadata[RANGE])]


def _pacing_keys() -> list[str]:
    return [key for key, f in NUMERIC if RANGE in f.metadata and f.metadata[RANGE].pacing]


def _nested(key: str, value: object) -> dict[str, Any]:
    tree: Any = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _error_lines(path: Path | None, env: dict[str, str]) -> list[str]:
    """The lines of the ConfigError that loading raises (it must raise)."""
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=env)
    return [line.strip() for line in str(err.value).splitlines()[1:]]


def _file_errors(tmp_path: Path, key: str, value: object) -> tuple[Path, list[str]]:
    path = tmp_path / "tunewatch.yml"
    path.write_text(yaml.safe_dump(_nested(key, value), default_flow_style=False))
    return path, _error_lines(path, {})


SECTIONS = {key for key, _f, tp in _schema_fields(Config, "") if _is_dataclass_type(tp)}


def _numeric_leaves(tree: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted keys of the numbers (not booleans) in the sections of a YAML tree (not in
    mappings that are values, such as composite_weights)."""
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, dict) and key in SECTIONS:
            yield from _numeric_leaves(value, key)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key


def test_every_numeric_key_declares_a_range():
    undeclared = [key for key, f in NUMERIC if not isinstance(f.metadata.get(RANGE), Range)]
    assert undeclared == []


def test_numeric_keys_inside_lists_or_mappings_are_none():
    """The walk below sets keys by their dotted path; a number inside an entry of a list or a
    mapping (exporter.processes[0].x) would need its own case, so there must be none."""
    hidden = []
    for key, _f, tp in _schema_fields(Config, ""):
        for arg in typing.get_args(tp):
            if _is_dataclass_type(arg):
                hidden += [f"{key}: {k}" for k, _g, t in _schema_fields(arg, "") if _is_number(t)]
    assert hidden == []


def test_the_schema_walk_covers_every_numeric_key_of_the_shipped_file(repo_root: Path):
    shipped = yaml.safe_load((repo_root / "tunewatch.yml").read_text())
    assert set(_numeric_leaves(shipped)) == {key for key, _f in NUMERIC}


def test_every_default_is_within_its_range():
    outside = [key for key, f in NUMERIC if not _declared(f).contains(f.default)]
    assert outside == []


def test_defaults_and_the_shipped_file_load_without_error(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(None, environ={}).source == "(defaults)"
    assert load_config(repo_root / "tunewatch.yml", environ={}).source.endswith("tunewatch.yml")


def test_keys_named_as_pacing_are_declared_pacing():
    named = [key for key, _f in NUMERIC if PACING_NAME.search(key.rsplit(".", 1)[-1])]
    assert named  # the pattern still matches the schema's names
    assert [key for key in named if key not in _pacing_keys()] == []


@pytest.mark.parametrize(("key", "value"), _ranged_cases(),
                         ids=[f"{k}={v}" for k, v in _ranged_cases()])
def test_an_out_of_range_value_gives_one_error_naming_its_key(
        tmp_path: Path, key: str, value: float):
    path, lines = _file_errors(tmp_path, key, value)
    depth = len(key.split("."))
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{depth}: key '{key}': must be "), lines


@pytest.mark.parametrize("key", _pacing_keys())
def test_zero_is_refused_for_every_pacing_interval(tmp_path: Path, key: str):
    _path, lines = _file_errors(tmp_path, key, 0)
    assert len(lines) == 1 and f"key '{key}': must be above 0" in lines[0], lines
    assert "0 would spin" in lines[0]


def _one_case_per_section() -> list[tuple[str, float]]:
    first: dict[str, tuple[str, float]] = {}
    for key, value in _ranged_cases():
        first.setdefault(key.split(".")[0], (key, value))
    return list(first.values())


@pytest.mark.parametrize(("key", "value"), _one_case_per_section())
def test_an_out_of_range_environment_value_gives_one_error_naming_the_variable(
        key: str, value: float):
    name = "TUNEWATCH_" + "__".join(part.upper() for part in key.split("."))
    text = str(value)
    lines = _error_lines(None, {name: text})
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"environment variable {name}={text!r}: key '{key}': must be ")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("demo.max_steps", 10, "must be >= save_steps"),
    ("demo.degrade_at_step", 301, "must be 0 (off) or a multiple of demo.save_steps"),
    ("evaluator.retry_max_backoff_seconds", 1.0, "must be >= retry_backoff_seconds"),
    ("evaluator.remote.poll_max_seconds", 0.01, "must be >= poll_initial_seconds"),
])
def test_a_value_breaking_a_rule_across_keys_gives_one_error(
        tmp_path: Path, key: str, value: float, message: str):
    path, lines = _file_errors(tmp_path, key, value)
    assert lines == [f"{path}:{len(key.split('.'))}: key '{key}': {message}"]


def test_several_bad_values_give_one_error_each(tmp_path: Path):
    path = tmp_path / "tunewatch.yml"
    path.write_text("exporter:\n  gpu_sample_interval_seconds: 0\n  gpu_max_processes: -1\n"
                    "demo:\n  save_steps: 0\n  max_steps: 0\n")
    named = [re.findall(r"key '([^']+)'", line) for line in _error_lines(path, {})]
    assert sorted(named) == sorted([["exporter.gpu_sample_interval_seconds"],
                                    ["exporter.gpu_max_processes"], ["demo.save_steps"],
                                    ["demo.max_steps"]])


def test_remote_errors_include_the_declared_ranges_once():
    """Flags change the evaluator section after loading; its remote keys are checked again."""
    ev = EvaluatorConfig()
    broken = dataclasses.replace(ev, remote=dataclasses.replace(ev.remote,
                                                                poll_initial_seconds=0.0))
    errors = remote_errors(broken)
    assert len(errors) == 1 and errors[0].startswith(
        "evaluator.remote.poll_initial_seconds: must be above 0")
    assert remote_errors(ev) == []
