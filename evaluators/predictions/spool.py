"""A local JSONL spool for rows the store could not take, flushed when it is back.

Why a file and not memory: the evaluator may be restarted while PostgreSQL is down, and a
row lost then is a gap in an example's history. Rows are appended (one JSON object a line,
fsynced), and `flush` writes them all to the store before removing the file; a crash between
the two writes some rows twice, which the store's idempotent key turns into nothing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from evaluators.predictions.store import Row

log = logging.getLogger("tunewatch.predictions")

SPOOL_FILE = "pending.jsonl"


class Spool:
    """The pending rows of one evaluator (not shared between processes)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / SPOOL_FILE

    def append(self, rows: Sequence[Row]) -> None:
        """Keep rows for later; raises OSError when even the local disk refuses them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def pending(self) -> list[Row]:
        """The spooled rows; a torn last line (a crash mid-append) is skipped and logged."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable spooled row skipped", self.path, number)
        return rows

    def count(self) -> int:
        return len(self.pending())

    def flush(self, write: Callable[[Sequence[Row]], int]) -> int:
        """Write every spooled row with `write`, then empty the spool; rows written (new).
        If `write` raises, the spool is left as it was."""
        rows = self.pending()
        if not rows:
            return 0
        new = write(rows)
        self.path.unlink(missing_ok=True)
        log.info("flushed %d spooled prediction row(s) (%d new)", len(rows), new)
        return new
