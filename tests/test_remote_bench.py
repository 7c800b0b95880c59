"""The remote-backend benchmark runs and its two passes agree answer for answer."""

from __future__ import annotations

import pytest
from benchsupport import run_bench

pytestmark = pytest.mark.slow


def test_bench_remote_smoke(tiny_run):
    figures = run_bench("bench_remote.py", "--limit", "20", "--checkpoint",
                        str(tiny_run.checkpoints[-1]), "--data", str(tiny_run.data_dir))
    assert figures["examples"] == 20
    assert figures["answers_identical"]
    assert figures["exact_match_remote"] == figures["exact_match_local"]
    assert figures["remote_examples_per_second"] > 0
    assert figures["remote_retries"] == 0
