"""The exporter benchmark runs end to end (figures only; targets are for `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_smoke(repo_root):
    done = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "bench_exporter.py"), "--smoke", "--json"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["scrapes"] == 50
    assert figures["series"] > 900  # 23 recorded boards: about 1k series
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["cpu_ms_per_scrape"] > 0
