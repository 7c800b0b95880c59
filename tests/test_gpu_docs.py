"""docs/metrics.md (GPU section) lists exactly the metrics the GPU collector publishes."""

from __future__ import annotations

from pathlib import Path

from catalogue import rows, types
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.collectors.gpu.collector import GpuCollector
from exporters.collectors.gpu.readings import XidEvent
from exporters.collectors.gpu.recorded import RecordedReader

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"


def documented() -> dict[str, str]:
    """name -> type of every tunewatch_gpu_* row of the catalogue, whatever its section."""
    return types([row for row in rows() if row.name.startswith("tunewatch_gpu_")])


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


def test_docs_table_matches_the_exposition():
    docs = documented()
    seen = published()
    assert sorted(docs) == sorted(seen)
    for name, kind in seen.items():
        assert docs[name] == kind, name
