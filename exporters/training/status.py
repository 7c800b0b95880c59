"""Reading a trainer's status file and its queued JSONL files (DESIGN section 9).

Status file: one JSON object, every field optional, unknown fields ignored:

    {"state": "training", "step": 120, "max_steps": 600, "epoch": 0.4, "loss": 1.93,
     "eval_loss": 2.1, "learning_rate": 1e-4, "grad_norm": 0.8, "tokens_seen": 48211,
     "samples_seen": 960, "run": "r1", "model": "m", "dataset": "d", "regime": "r",
     "current_file": "batch_07.jsonl", "batch": 3, "batches_total": 12,
     "model_parameters": 494032768, "model_trainable_parameters": 8798208,
     "batch_size": 32, "updated_at": "2026-01-05T10:00:00Z"}

Aliases: `status` for `state`, `current_step` for `step`, `total_steps` for `max_steps`.
`updated_at` is unix seconds or ISO 8601 (without a zone: UTC). The parameter counts
(`model_parameters`, `model_trainable_parameters`, extending DESIGN's list for the MFU rule)
and `batch_size` (samples per optimizer step, extending it for seed 001's throughput by batch
size) are whole numbers >= 0.

Queue lines: a JSONL line is well formed when it is a JSON object whose `messages` is a
non-empty list of {role, content} objects (role system, user, assistant or tool; content a
string) with at least one user and one assistant message (ChatML structure).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ALIASES = {"status": "state", "current_step": "step", "total_steps": "max_steps"}
NUMBER_FIELDS = ("step", "max_steps", "epoch", "loss", "eval_loss", "learning_rate",
                 "grad_norm", "tokens_seen", "samples_seen", "batch", "batches_total")
COUNT_FIELDS = ("model_parameters", "model_trainable_parameters", "batch_size")
TEXT_FIELDS = ("run", "model", "dataset", "regime", "current_file")
TRAINER_STATES = ("idle", "training", "paused", "completed", "crashed")
ROLES = ("system", "user", "assistant", "tool")


class StatusError(ValueError):
    """The status file cannot be used; `reason` is the metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Status:
    """The usable fields of one status file; `problems` lists fields that were ignored."""

    state: str | None = None
    numbers: dict[str, float] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    updated_at: float | None = None
    problems: list[str] = field(default_factory=list)


def parse_timestamp(value: Any) -> float:
    """Unix seconds (number or numeric string) or ISO 8601 (naive means UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            stamp = datetime.fromisoformat(value.strip())
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            number = stamp.timestamp()
    else:
        raise ValueError(f"not a time: {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"not a time: {value!r}")
    return number


def _as_number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (booleans are not numbers)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float (JSON allows 1e400 digits)
            return None
    return None


def _as_count(value: Any) -> float | None:
    """A JSON number that is a whole number >= 0 (1.5e9 is one), as a float; else None.

    Why not any number: a parameter count of -1 or 2.5 is a writer's bug, and published it
    would turn the MFU rule into nonsense; it is a problem like a field of the wrong type.
    """
    number = _as_number(value)
    if number is None or not math.isfinite(number) or number < 0 or not number.is_integer():
        return None
    return number


def _as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _typed(data: dict[str, Any], names: Iterable[str], convert: Callable[[Any], T | None],
           problems: list[str]) -> dict[str, T]:
    """The present fields among `names` that `convert` accepts; each other one is a
    problem ("name value"), so one bad field never hides the good ones."""
    found: dict[str, T] = {}
    for name in names:
        value = data.get(name)
        if value is None:
            continue
        converted = convert(value)
        if converted is None:
            problems.append(f"{name} {value!r}")
        else:
            found[name] = converted
    return found


def parse_status(text: str) -> Status:
    """Parse the status file's text; StatusError("parse_error" | "not_an_object") if unusable.

    A field with a wrong type is ignored (named in `problems`); NaN and infinite numbers are
    kept as they are, the caller decides (a non-finite loss is counted, never published).
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StatusError("parse_error", f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise StatusError("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    for alias, name in ALIASES.items():
        if alias in data and name not in data:
            data[name] = data[alias]
    status = Status()
    state = data.get("state")
    if state is not None:
        if isinstance(state, str) and state.strip().lower() in TRAINER_STATES:
            status.state = state.strip().lower()
        else:
            status.problems.append(f"state {state!r}")
    status.numbers = _typed(data, NUMBER_FIELDS, _as_number, status.problems)
    status.numbers.update(_typed(data, COUNT_FIELDS, _as_count, status.problems))
    status.texts = _typed(data, TEXT_FIELDS, _as_text, status.problems)
    if data.get("updated_at") is not None:
        try:
            status.updated_at = parse_timestamp(data["updated_at"])
        except ValueError:
            status.problems.append(f"updated_at {data['updated_at']!r}")
    return status


def well_formed_line(line: str) -> bool:
    """True if the JSONL line has ChatML structure (see the module docstring)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    roles = set()
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return False
        if not isinstance(message.get("content"), str):
            return False
        roles.add(message["role"])
    return {"user", "assistant"} <= roles


@dataclass
class QueueFile:
    """Counts of one queued JSONL file: examples (well-formed lines) and malformed lines."""

    examples: int
    malformed: int
    malformed_lines: list[int]


def scan_queue_file(path: Path) -> QueueFile:
    """Count well-formed and malformed lines (blank lines are neither)."""
    examples = malformed = 0
    bad: list[int] = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if well_formed_line(line):
                examples += 1
            else:
                malformed += 1
                if len(bad) < 10:
                    bad.append(number)
    return QueueFile(examples, malformed, bad)
