"""Export prediction rows as CSV or JSONL (the CLI's `export` and retention's archive).

Why both: JSONL keeps types and multi-line texts exactly (for re-import and scripts), CSV
opens in a spreadsheet. created_at is written as ISO 8601 UTC in both, so a file says when
without knowing the store's clock.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from evaluators.predictions.schema import COLUMNS

Row = dict[str, Any]
FIELDS = ("id", *COLUMNS)


def _plain(row: Row) -> Row:
    out = {k: row.get(k) for k in FIELDS}
    created = out.get("created_at")
    if isinstance(created, (int, float)):
        out["created_at"] = datetime.fromtimestamp(created, tz=timezone.utc).isoformat()
    return out


def dump_jsonl(rows: Iterable[Row], fh: IO[str]) -> int:
    n = 0
    for row in rows:
        fh.write(json.dumps(_plain(row), ensure_ascii=False) + "\n")
        n += 1
    return n


def dump_csv(rows: Iterable[Row], fh: IO[str]) -> int:
    writer = csv.DictWriter(fh, fieldnames=FIELDS)
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow(_plain(row))
        n += 1
    return n


def write_jsonl(rows: Iterable[Row], path: Path) -> int:
    """Write rows to a JSONL file (created with its directory); how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        return dump_jsonl(rows, fh)
