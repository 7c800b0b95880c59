"""The metric catalogue (docs/metrics.md) as data, for the tests that hold code to it.

Why one parser: the catalogue is the contract between what the servers publish, the
dashboards query and the docs promise; the tests that check each of those read the same
rows the same way. A row is a table line whose first cell is a metric name in backticks:

    | `name` | type | unit | labels | meaning |

and belongs to the `## ` section above it (the title up to its first '(', e.g. "Host
exporter"; `### ` subsections stay in their section).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


@dataclass(frozen=True)
class Row:
    """One metric of the catalogue."""

    section: str
    name: str
    type_cell: str  # as written: "gauge", "counter", "gauge (info)"
    unit: str
    labels: tuple[str, ...]
    meaning: str
    cells: tuple[str, ...]  # every cell, stripped, for checks of the table's shape
    line: str

    @property
    def type(self) -> str:
        """The Prometheus type: the type cell's first word."""
        return self.type_cell.split()[0] if self.type_cell.split() else ""


def section_title(heading: str) -> str:
    """`## Evaluator (`tunewatch evaluate`, :9947)` -> `Evaluator`."""
    return heading.lstrip("#").split("(")[0].strip()


def _row(section: str, line: str) -> Row:
    cells = tuple(c.strip() for c in line.strip().strip("|").split("|"))
    padded = cells + ("",) * (5 - len(cells))
    labels = tuple(x.strip() for x in padded[3].split(",") if x.strip())
    return Row(section=section, name=padded[0].strip("`"), type_cell=padded[1],
               unit=padded[2], labels=labels, meaning=padded[4], cells=cells, line=line)


def rows(path: Path = CATALOGUE) -> list[Row]:
    """Every metric row of the catalogue, in order."""
    found: list[Row] = []
    section = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = section_title(line)
        elif line.startswith("| `"):
            found.append(_row(section, line))
    return found


def sections(path: Path = CATALOGUE) -> dict[str, list[Row]]:
    """Section title -> its rows, every `## ` section present (even without rows)."""
    out: dict[str, list[Row]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            out.setdefault(section_title(line), [])
    for row in rows(path):
        out.setdefault(row.section, []).append(row)
    return out


def section_rows(title: str, path: Path = CATALOGUE) -> list[Row]:
    """The rows of the one section whose title starts with `title`."""
    found = sections(path)
    matches = [k for k in found if k.startswith(title)]
    assert len(matches) == 1, f"docs/metrics.md has no single section {title!r}: {list(found)}"
    return found[matches[0]]


def types(selected: list[Row]) -> dict[str, str]:
    """name -> type of `selected` rows; a name listed twice is an error."""
    out: dict[str, str] = {}
    for row in selected:
        assert row.name not in out, f"{row.name} listed twice"
        out[row.name] = row.type
    return out
