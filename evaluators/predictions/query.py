"""What a person asks of the recorded predictions, and the answers as terminal text.

Why apart from the store: `tunewatch predictions list|follow|accuracy` turns what a person
types (a time as an ISO date, unix seconds or an age such as 2h) into store filters, pages
through the rows, and lays them out as one-line table rows; the store (store.py) only
selects. Long texts are flattened to one line and shortened with `...`, so a table row is
always one line whatever the prompt holds.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

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


def follow_text(rows: list[Row]) -> str:
    """One example's prompt and golden answer, then its answer at each checkpoint."""
    first = rows[0]
    out = [f"example {first['example_id']} ({first['dataset']}, {first['difficulty']})",
           f"prompt: {_short(first['prompt'], 200)}", f"golden: {_short(first['golden'], 200)}",
           "", f"{'run':<12} {'step':>6} {'epoch':>6} {'match':<5} {'CE':>7} answer"]
    for r in rows:
        epoch = f"{r['epoch']:.2f}" if r["epoch"] is not None else "-"
        ce = f"{r['cross_entropy']:.3f}" if r["cross_entropy"] is not None else "-"
        out.append(f"{_short(r['run'], 12):<12} {r['step']:>6} {epoch:>6} {_match(r):<5} "
                   f"{ce:>7} {_short(r['answer'], 60)}")
    return "\n".join(out) + "\n"


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
