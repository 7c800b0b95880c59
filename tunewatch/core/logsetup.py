"""Logging set-up shared by every tunewatch command.

Why a module: every process logs the same way (one line per event, the level and the logger
name first), so that a failure names its cause in the same shape whatever process hit it.
Three formats, chosen by `--log.format` or `log_format` in the config:

- `text` (default): `2026-11-30T21:00:00 INFO tunewatch.server: message`, for a terminal;
- `logfmt`: `time=... level=info logger=tunewatch.server msg="message"`, as the exporters
  built on prometheus/common (promslog) write it, for Loki and friends;
- `json`: one JSON object a line with the same keys, for log shippers that parse JSON.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "logfmt", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
QUIET_LOGGERS = ("urllib3", "filelock", "httpx", "httpcore", "watchdog")


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, str]:
    """The structured fields of one record: time (UTC, ms), level, logger, msg, exc."""
    stamp = datetime.fromtimestamp(record.created, tz=timezone.utc)
    out = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    if record.exc_info:
        out["exc"] = formatter.formatException(record.exc_info)
    return out


def _logfmt_value(value: str) -> str:
    """A logfmt value: bare when it is a plain token, else quoted with escapes."""
    if value and not any(ch in value for ch in ' ="\\\n\t'):
        return value
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
               .replace("\n", "\\n").replace("\t", "\\t"))
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """`key=value` pairs on one line; a traceback becomes one escaped `exc` value."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record, self).items())


class JsonFormatter(logging.Formatter):
    """One JSON object a line, ASCII-escaped so a line never breaks a log shipper."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record, self))


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "logfmt":
        return LogfmtFormatter()
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return logging.Formatter(TEXT_FORMAT, datefmt=TEXT_DATE_FORMAT)
    raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once for a command-line process (stderr)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
