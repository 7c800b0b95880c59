"""docs/metrics.md equals what the running tunewatch servers really publish, name and type.

Each server runs as a real process, is driven through its failure paths first (a bad pid
file, a missing queue directory, ...), then scraped over HTTP. Each `## ` section of the
catalogue belongs to one process; "Every tunewatch server" belongs to all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from services import Tunewatch, promtool_check_metrics

REPO = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(tunewatch_\w+)` \| (\w+)")
COMMON = "Every tunewatch server"
HOST = "Host exporter"


def catalogue() -> dict[str, dict[str, str]]:
    """`## ` section title (up to its first '(') -> {metric name: type}."""
    sections: dict[str, dict[str, str]] = {}
    current = None
    for line in (REPO / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].split("(")[0].strip()
            sections[current] = {}
        elif current and (m := ROW.match(line)):
            assert m.group(1) not in sections[current], f"{m.group(1)} listed twice"
            sections[current][m.group(1)] = m.group(2)
    return sections


def published(text: str) -> dict[str, str]:
    """Exposed name -> type; counters by their `_total` samples, `_created` left out."""
    out: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        if family.type in ("histogram", "summary", "gaugehistogram"):
            out[family.name] = family.type
            continue
        for sample in family.samples:
            if family.type == "counter" and sample.name.endswith("_created"):
                continue
            out[sample.name] = family.type
    return out


def section(title: str) -> dict[str, str]:
    sections = catalogue()
    matches = [k for k in sections if k.startswith(title)]
    assert len(matches) == 1, f"docs/metrics.md has no single section {title!r}: {list(sections)}"
    return {**sections[matches[0]], **sections[COMMON]}


def assert_equal(documented: dict[str, str], seen: dict[str, str], who: str) -> None:
    missing = sorted(set(seen) - set(documented))
    stale = sorted(set(documented) - set(seen))
    assert not missing, f"{who} publishes metrics docs/metrics.md does not list: {missing}"
    assert not stale, f"docs/metrics.md lists metrics {who} does not publish: {stale}"
    wrong = {n: (documented[n], t) for n, t in seen.items() if documented[n] != t}
    assert not wrong, f"{who}: documented vs published type differ: {wrong}"


# --------------------------------------------------------------------------- host exporter


@pytest.fixture(scope="module")
def host_text(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("catalogue-host")
    (root / "ckpt" / "checkpoint-5").mkdir(parents=True)
    (root / "queue").mkdir()
    (root / "queue" / "a.jsonl").write_text("{}\n")
    (root / "bad.pid").write_text("garbage")
    cfg = {"exporter": {
        "processes": [{"name": "self", "cmdline_pattern": "tunewatch exporter|-m tunewatch"},
                      {"name": "broken", "pid_file": str(root / "bad.pid")}],
        "checkpoint_dirs": [str(root / "ckpt")],
        "queue_dirs": [{"path": str(root / "queue"), "priority": "high"},
                       {"path": str(root / "absent"), "priority": "low"}],
        "gpu_readings_file": str(REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"),
    }}
    (root / "tunewatch.yml").write_text(yaml.safe_dump(cfg))
    exporter = Tunewatch("exporter", root).start(["exporter", "--config",
                                                   str(root / "tunewatch.yml")])
    try:
        exporter.metrics()  # the first scrape runs the failure paths
        yield exporter.metrics()
    finally:
        exporter.stop()


def test_host_exporter_matches_the_catalogue(host_text: str):
    documented = section(HOST)
    seen = published(host_text)
    # The GPU rows are compared with every recorded board (tests/test_gpu_docs.py); one
    # recording cannot reach them all (consumer-only fields, read errors), so here the GPU
    # metrics published must be documented, and everything else must match exactly.
    gpu_seen = {n: t for n, t in seen.items() if n.startswith("tunewatch_gpu_")}
    assert gpu_seen, "the recorded GPU readings were not served"
    for name, kind in gpu_seen.items():
        assert documented.get(name) == kind, f"{name} ({kind}) not in docs/metrics.md"
    assert_equal({n: t for n, t in documented.items() if not n.startswith("tunewatch_gpu_")},
                 {n: t for n, t in seen.items() if not n.startswith("tunewatch_gpu_")},
                 "tunewatch exporter")


def test_host_exporter_output_passes_promtool(host_text: str):
    assert promtool_check_metrics(host_text) == ""


def test_every_row_is_well_formed():
    """Five columns, a known type, a unit and a meaning on every row."""
    text = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        if ROW.match(line):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) >= 5, line
            assert cells[1].split()[0] in ("gauge", "counter", "histogram", "summary"), line
            assert cells[2] and cells[4], line
