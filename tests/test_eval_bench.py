"""The evaluation benchmark runs, and its two paths agree on exact match."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_smoke(tiny_run, repo_root):
    done = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "bench_eval.py"), "--smoke", "--json",
         "--checkpoint", str(tiny_run.checkpoints[-1]), "--data", str(tiny_run.data_dir)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["examples"] == 30
    assert figures["exact_match_identical"]
    assert figures["exact_match_batched"] > 0
    assert figures["speedup"] > 1.0
    assert figures["batched_peak_rss_bytes"] > 10 * 1024 * 1024
