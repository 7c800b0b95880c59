"""The exporter benchmark runs end to end (figures only; targets are for `make bench`)."""

from __future__ import annotations

import pytest
from benchsupport import run_bench

from exporters.exposition import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE

pytestmark = pytest.mark.slow


def test_bench_smoke():
    figures = run_bench("bench_exporter.py", "--smoke", "--compare", timeout=600)
    assert figures["scrapes"] == 50
    assert figures["series"] > 900  # 23 recorded boards: about 1k series
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["cpu_ms_per_scrape"] > 0
    # Scraped with Prometheus's headers, the default server answers text, gzipped.
    assert figures["content_type"] == TEXT_CONTENT_TYPE
    assert figures["content_encoding"] == "gzip"
    # A real Prometheus scraped it and recorded its durations.
    assert figures["prometheus_scrapes"] > 0
    assert 0 < figures["prometheus_p50_ms"] <= figures["prometheus_p99_ms"] \
        <= figures["prometheus_max_ms"]
    # ... and what it records for a static copy of the same answer (its own share).
    assert 0 < figures["prometheus_floor_p50_ms"] <= figures["prometheus_floor_p99_ms"] \
        <= figures["prometheus_floor_max_ms"]
    compared = figures["compare"]
    assert compared["openmetrics"]["content_type"] == OPENMETRICS_CONTENT_TYPE
    assert compared["gzip_level_0"]["content_encoding"] == ""
    assert compared["gzip_level_9"]["content_encoding"] == "gzip"
    for fig in compared.values():
        assert 0 < fig["p50_ms"] <= fig["p99_ms"] <= fig["max_ms"]
