"""`tunewatch compare`: the paired table and McNemar between two real checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def compare(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunewatch", "compare", *args],
                          capture_output=True, text=True, timeout=300)


def test_a_later_checkpoint_is_better_and_the_reverse_is_a_regression(tiny_run):
    first, last = (str(p) for p in (tiny_run.checkpoints[0], tiny_run.checkpoints[-1]))
    data = str(tiny_run.data_dir)
    forward = compare(first, last, "--data", data, "--json")
    assert forward.returncode == 0, forward.stderr
    up = json.loads(forward.stdout)
    assert up["overall"]["fixed"] > up["overall"]["broken"]
    assert up["overall"]["difference"] > 0 and not up["regression"]
    backward = json.loads(compare(last, first, "--data", data, "--json").stdout)
    assert backward["regression"]
    assert backward["overall"]["fixed"] == up["overall"]["broken"]
    assert backward["overall"]["p_value"] == pytest.approx(up["overall"]["p_value"])
    assert backward["overall"]["p_value"] < 0.05
    pairs = up["overall"]
    assert up["both_right"] + up["both_wrong"] + pairs["fixed"] + pairs["broken"] == \
        pairs["examples"]
    text = compare(first, last, "--data", data).stdout
    assert "McNemar p" in text and "not a regression" in text


def test_a_missing_checkpoint_fails_loudly(tiny_run, tmp_path):
    done = compare(str(tmp_path / "nope"), str(tiny_run.checkpoints[0]), "--data",
                   str(tiny_run.data_dir))
    assert done.returncode == 1
    assert "reason=checkpoint_missing" in done.stderr
