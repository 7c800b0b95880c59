"""`tunewatch compare`: the paired table and McNemar between two real checkpoints.

The pair is built so that the answer holds by construction on any machine: the last
checkpoint against a copy of it with every weight zeroed (which answers nothing right), on
the last checkpoint's answer key (its own greedy answers as the golden ones). What is
asserted are rules: the table adds up, the p-value and the verdict follow from the table by
an independent computation (tests/paired_reference.py), and swapping the two mirrors it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from paired_reference import Pairs

from tunewatch.core.config import EvaluatorConfig
from tunewatch.demo.tinymodel import blank_checkpoint

pytestmark = pytest.mark.slow


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewatch", "compare", *args],
                          capture_output=True, text=True, timeout=300)


def compare_json(a: Path, b: Path, data: Path) -> dict:
    done = compare(str(a), str(b), "--data", str(data), "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def check_table(table: dict) -> bool:
    """Every figure of one direction against its own paired counts; the expected verdict."""
    rules = EvaluatorConfig().regression
    overall = table["overall"]
    assert table["both_right"] + table["both_wrong"] + overall["fixed"] + overall["broken"] \
        == overall["examples"]
    regression = False
    for name, row in [("overall", overall), *table["per_difficulty"].items()]:
        reference = Pairs(row["examples"], row["fixed"], row["broken"])
        assert row["difference"] == pytest.approx(-reference.drop, abs=1e-12), name
        assert row["p_value"] == pytest.approx(reference.p_value, rel=1e-9, abs=1e-300), name
        assert row["difference_low"] <= row["difference"] <= row["difference_high"], name
        limit = rules.min_drop_overall if name == "overall" else rules.min_drop_per_difficulty
        regression = regression or reference.is_drop(limit, rules.max_p_value)
    per = table["per_difficulty"].values()
    for field in ("examples", "fixed", "broken"):
        assert sum(row[field] for row in per) == overall[field], field
    assert table["regression"] == regression
    return regression


def test_a_blank_copy_is_a_regression_and_the_reverse_is_not(tiny_run, answer_key, tmp_path):
    good = tiny_run.checkpoints[-1]
    blank = blank_checkpoint(good, tmp_path / "checkpoint-301")
    down = compare_json(good, blank, answer_key)
    # The blank copy answers nothing right: it fixes nothing, and breaks every example the
    # good one answers right.
    assert down["both_right"] == 0 and down["overall"]["fixed"] == 0
    assert check_table(down), f"the answer key makes the drop significant: {down['overall']}"
    up = compare_json(blank, good, answer_key)
    assert not check_table(up)
    assert (up["overall"]["fixed"], up["overall"]["broken"]) == (
        down["overall"]["broken"], down["overall"]["fixed"])
    assert up["overall"]["p_value"] == pytest.approx(down["overall"]["p_value"], rel=1e-12)
    assert up["overall"]["difference"] == pytest.approx(-down["overall"]["difference"])
    assert (up["both_right"], up["both_wrong"]) == (down["both_right"], down["both_wrong"])
    # The table for people says the same (one direction: each run loads both checkpoints).
    text = compare(str(good), str(blank), "--data", str(answer_key)).stdout
    assert "McNemar p" in text and "B is a REGRESSION from A" in text


def test_a_missing_checkpoint_fails_loudly(tiny_run, tmp_path):
    done = compare(str(tmp_path / "nope"), str(tiny_run.checkpoints[0]), "--data",
                   str(tiny_run.data_dir))
    assert done.returncode == 1
    assert "reason=checkpoint_missing" in done.stderr
