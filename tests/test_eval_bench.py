"""The evaluation benchmark runs, and its two paths agree on exact match."""

from __future__ import annotations

import pytest
from benchsupport import run_bench

pytestmark = pytest.mark.slow


def test_bench_smoke(tiny_run):
    figures = run_bench(
        "bench_eval.py", "--smoke", "--checkpoint", str(tiny_run.checkpoints[-1]),
        "--data", str(tiny_run.data_dir),
        # Batch size 1: no padding, so both paths do the same computation and must agree
        # on any machine; a padded batch may tip a near-tie (test_eval_correctness.py).
        "--batch-size", "1")
    assert figures["examples"] == 30
    assert figures["exact_match_identical"]
    assert figures["exact_match_batched"] == figures["exact_match_naive"]
    assert 0 <= figures["exact_match_batched"] <= figures["examples"]
    # The speed-up is a figure of the two reported rates, not a threshold a test can hold
    # on any machine (speed targets are the benchmark's own, outside --smoke).
    assert figures["speedup"] == pytest.approx(
        figures["batched_examples_per_second"] / figures["naive_examples_per_second"])
    assert figures["batched_peak_rss_bytes"] > 10 * 1024 * 1024
