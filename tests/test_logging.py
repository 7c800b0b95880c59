"""Log flags and formats: `--log.level` restricted to its values, `--log.format logfmt|json`."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunewatch.core.logsetup import JsonFormatter, LogfmtFormatter

LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def _record(message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad value")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("tunewatch.test", logging.WARNING, __file__, 1, message, None,
                             exc_info)


def _parse_logfmt(line: str) -> dict[str, str]:
    """A small logfmt reader (what Loki's `| logfmt` does), to check what we write."""
    pairs = {}
    for key, raw in LOGFMT_PAIR.findall(line):
        if raw.startswith('"'):
            raw = json.loads(raw)  # logfmt's escapes are JSON's for these characters
        pairs[key] = raw
    return pairs


@pytest.mark.parametrize("message", ["plain", 'a "quoted" = value\nsecond line', ""])
def test_logfmt_round_trips(message: str):
    line = LogfmtFormatter().format(_record(message))
    assert "\n" not in line
    fields = _parse_logfmt(line)
    assert fields["msg"] == message
    assert (fields["level"], fields["logger"]) == ("warning", "tunewatch.test")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["time"])


def test_json_is_one_object_a_line_with_the_traceback():
    line = JsonFormatter().format(_record("failed: x", exc=True))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "failed: x" and obj["level"] == "warning"
    assert "ValueError: bad value" in obj["exc"]


def _tunewatch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewatch", *args], capture_output=True,
                          text=True, check=False, cwd=cwd, timeout=60)


def test_unknown_log_level_is_a_usage_error(tmp_path: Path):
    done = _tunewatch("config", "--log.level", "verbose", cwd=tmp_path)
    assert done.returncode == 2
    assert "invalid choice: 'verbose'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_config_error_is_logged_as_json(tmp_path: Path, where: str):
    bad = tmp_path / "tw.yml"
    bad.write_text("stack:\n  prometheus_port: nine\n")
    flags = ["--log.format", "json"]
    args = [*flags, "config", "--config", str(bad)] if where == "before" else [
        "config", "--config", str(bad), *flags]
    done = _tunewatch(*args, cwd=tmp_path)
    assert done.returncode == 2
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert lines[0]["level"] == "error"
    assert "key 'stack.prometheus_port'" in lines[0]["msg"]
