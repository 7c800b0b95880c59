"""docs/metrics.md (GPU section) lists exactly the metrics the GPU collector publishes."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.collectors.gpu import GpuCollector
from exporters.collectors.nvml_reader import RecordedReader, XidEvent

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
ROW = re.compile(r"^\| `(tunewatch_gpu_\w+)` \| (\w+)")


def documented(repo_root: Path) -> dict[str, str]:
    text = (repo_root / "docs" / "metrics.md").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in map(ROW.match, text.splitlines()) if m}


def published() -> dict[str, str]:
    """Sample name -> type over scrapes that together reach every metric."""
    out: dict[str, str] = {}
    for fixture, scrapes in (("h100-load.json", 1), ("consumer-4090-3090.json", 3)):
        collector = GpuCollector(RecordedReader.from_file(FIXTURES / fixture))
        collector.xids.record([XidEvent(0, 79, "GPU-x")])
        registry = CollectorRegistry()
        registry.register(collector)
        try:
            for _ in range(scrapes):
                text = generate_latest(registry).decode()
                for family in text_string_to_metric_families(text):
                    for sample in family.samples:
                        out[sample.name] = family.type
        finally:
            collector.close()
    return out


def test_docs_table_matches_the_exposition(repo_root: Path):
    docs = documented(repo_root)
    seen = published()
    assert sorted(docs) == sorted(seen)
    for name, kind in seen.items():
        assert docs[name] == kind, name
