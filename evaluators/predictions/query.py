"""What a person asks of the recorded predictions, and the answers as terminal text.

Why apart from the store: `tunewatch predictions list|follow|accuracy` turns what a person
types (a time as an ISO date, unix seconds or an age such as 2h) into store filters, pages
through the rows, and lays them out as one-line table rows; the store (store.py) only
selects. Long texts are flattened to one line and shortened with `...`, so a table row is
always one line whatever the prompt holds.

`follow` marks where an example's answer changed (seed 002's diff across epochs): each
checkpoint's answer against the one recorded before it in the same run, and whether the
match flipped (`fixed`: wrong before, exact now; `broken`: the other way).
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from evaluators.predictions.export import dump_jsonl
from evaluators.predictions.store import Filters, Row, Store
from tunewatch.core.errors import UsageError

# `accuracy`: exact match over the latest 20, 50 and 100 predictions of the sample.
WINDOWS = (20, 50, 100)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ISO 8601 (UTC if no zone), unix seconds, or an age like 2h / 7d."""
    now = time.time() if now is None else now
    if m := _RELATIVE.match(text.strip()):
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"cannot read the time {text!r}: use ISO 8601 (2026-01-31T12:00), "
                         "unix seconds or an age such as 30m, 2h, 7d") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass(frozen=True)
class Page:
    """One page of matching rows, newest step first, and how many match in all."""

    rows: list[Row]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))


def page(store: Store, filters: Filters, *, size: int, number: int) -> Page:
    """Page `number` (from 1) of `size` rows matching `filters`."""
    rows = store.query(filters, limit=size, offset=(number - 1) * size)
    return Page(rows, number, size, store.count(filters))


def _short(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _match(row: Row) -> str:
    return "yes" if row["exact_match"] else ("norm" if row["normalized_match"] else "no")


def page_text(found: Page) -> str:
    """The page as a table (one line per prediction), then `page N of M (T matching rows)`."""
    head = f"{'step':>6} {'example':<16} {'difficulty':<10} {'match':<5} {'failure':<10} " \
           f"{'prompt':<32} {'golden':<20} answer"
    lines = [head]
    for r in found.rows:
        lines.append(f"{r['step']:>6} {_short(r['example_id'], 16):<16} "
                     f"{_short(r['difficulty'], 10):<10} {_match(r):<5} "
                     f"{_short(r['failure_mode'] or '', 10):<10} {_short(r['prompt'], 32):<32} "
                     f"{_short(r['golden'], 20):<20} {_short(r['answer'], 40)}")
    lines.append(f"page {found.number} of {found.pages} ({found.total} matching rows)")
    return "\n".join(lines) + "\n"


def follow(store: Store, example_id: str, run: str | None) -> list[Row]:
    """Every prediction of one example, oldest step first (across runs unless `run`)."""
    return store.query(Filters(run=run, example_id=example_id), newest_first=False)


@dataclass(frozen=True)
class Change:
    """How one recorded answer differs from the one before it (same example, same run).

    answer_changed: None at the first recorded checkpoint of the run (nothing to compare);
    match_change: `fixed`, `broken` or None (the exact match did not flip).
    """

    answer_changed: bool | None
    match_change: str | None

    def marker(self) -> str:
        """The text column: `first`, `same`, `changed`, or `changed fixed|broken`."""
        if self.answer_changed is None:
            return "first"
        if not self.answer_changed:
            return "same"
        return f"changed {self.match_change}" if self.match_change else "changed"


def changes(rows: Sequence[Row]) -> list[Change]:
    """Per row of `follow` (oldest step first): its change against the previous row of the
    same run."""
    previous: dict[str, Row] = {}
    out = []
    for r in rows:
        before = previous.get(r["run"])
        previous[r["run"]] = r
        if before is None:
            out.append(Change(None, None))
            continue
        flipped = bool(before["exact_match"]) != bool(r["exact_match"])
        out.append(Change(before["answer"] != r["answer"],
                          ("fixed" if r["exact_match"] else "broken") if flipped else None))
    return out


def follow_text(rows: list[Row]) -> str:
    """One example's prompt and golden answer, then its answer at each checkpoint, marked
    where it changed."""
    first = rows[0]
    out = [f"example {first['example_id']} ({first['dataset']}, {first['difficulty']})",
           f"prompt: {_short(first['prompt'], 200)}", f"golden: {_short(first['golden'], 200)}",
           "", f"{'run':<12} {'step':>6} {'epoch':>6} {'match':<5} {'CE':>7} "
               f"{'change':<14} answer"]
    for r, change in zip(rows, changes(rows), strict=True):
        epoch = f"{r['epoch']:.2f}" if r["epoch"] is not None else "-"
        ce = f"{r['cross_entropy']:.3f}" if r["cross_entropy"] is not None else "-"
        out.append(f"{_short(r['run'], 12):<12} {r['step']:>6} {epoch:>6} {_match(r):<5} "
                   f"{ce:>7} {change.marker():<14} {_short(r['answer'], 60)}")
    return "\n".join(out) + "\n"


def follow_jsonl(rows: list[Row], fh: IO[str]) -> int:
    """The rows as `export` writes them, each with `answer_changed` and `match_change`."""
    buffer = io.StringIO()
    dump_jsonl(rows, buffer)
    lines = buffer.getvalue().splitlines()
    for line, change in zip(lines, changes(rows), strict=True):
        record: dict[str, Any] = json.loads(line)
        record.update(answer_changed=change.answer_changed, match_change=change.match_change)
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(lines)


def recent_accuracy(store: Store, run: str | None) -> dict[int, tuple[int, int]]:
    """Window -> (exact matches, predictions) over the latest predictions of the sample."""
    latest = store.recent_matches(run, max(WINDOWS))
    return {n: (sum(latest[:n]), len(latest[:n])) for n in WINDOWS}


def accuracy_text(windows: dict[int, tuple[int, int]]) -> str:
    """`last  20: exact match 45.0% (9/20)`, one line per window, noting a short one."""
    lines = []
    for n, (right, seen) in windows.items():
        rate = f"{right / seen * 100:.1f}%" if seen else "-"
        note = "" if seen == n else f" (only {seen} recorded)"
        lines.append(f"last {n:>3}: exact match {rate} ({right}/{seen}){note}\n")
    return "".join(lines)
