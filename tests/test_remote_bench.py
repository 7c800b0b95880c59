"""The remote-backend benchmark runs and its two passes agree answer for answer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_remote_smoke(tiny_run, repo_root):
    done = subprocess.run(
        [sys.executable, str(repo_root / "bench" / "bench_remote.py"), "--json", "--limit",
         "20", "--checkpoint", str(tiny_run.checkpoints[-1]), "--data", str(tiny_run.data_dir)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["examples"] == 20
    assert figures["answers_identical"]
    assert figures["exact_match_remote"] == figures["exact_match_local"]
    assert figures["remote_examples_per_second"] > 0
    assert figures["remote_retries"] == 0
