"""Fault: the disk under the evaluator's state fills up while the state is being written.

Why: a crash or a full disk must leave the old state (which checkpoints were evaluated, the
baselines' outcomes) readable, or the next start re-evaluates everything or loses the
baselines; and the failure must be visible as a metric, not only as a log line. A real
tmpfs of 64 KiB is the full disk (mounting needs root; skipped otherwise).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluators import daemon as daemon_mod
from evaluators.state import State, load, save
from tunewatch.core.config import EvaluatorConfig


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted under tmp_path, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _state(steps: int, keys: int) -> State:
    st = State()
    for s in range(1, steps + 1):
        st.checkpoints[s * 100] = {"checkpoint": f"checkpoint-{s * 100}", "status": "ok",
                                   "attempts": 1, "exact_match": 0.5,
                                   "evaluated_at": 1.0}
        st.outcomes[s * 100] = {f"example-{k:05d}": (k % 2 == 0, "easy") for k in range(keys)}
    return st


def _fill(directory: Path) -> None:
    """Fill the file system up to its last byte."""
    with contextlib.suppress(OSError), (directory / "ballast").open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


def test_full_disk_keeps_previous_state_and_counts(small_disk: Path, tmp_path: Path) -> None:
    state_dir = small_disk / "state"
    save(_state(1, 10), state_dir)
    before = (state_dir / "state.json").read_bytes()
    _fill(small_disk)

    with pytest.raises(OSError):
        save(_state(3, 300), state_dir)  # far bigger than what is left
    assert (state_dir / "state.json").read_bytes() == before
    assert list(state_dir.glob(".state-*.tmp")) == []  # no half-written temporary left
    assert sorted(load(state_dir).checkpoints) == [100]

    # The daemon logs and counts it as tunewatch_eval_failures_total{reason="state_write"}.
    cfg = EvaluatorConfig(state_dir=str(state_dir))
    ev = daemon_mod.Daemon(cfg, checkpoints=tmp_path / "none", data=tmp_path / "none",
                           state_dir=state_dir, run_name="t")
    ev.state = _state(3, 300)
    ev._save()
    samples = {(s.name, s.labels.get("reason")): s.value
               for fam in ev.collect() for s in fam.samples}
    assert samples[("tunewatch_eval_failures_total", "state_write")] == 1
    assert (state_dir / "state.json").read_bytes() == before

    # Space back: the next save succeeds and replaces it whole.
    (small_disk / "ballast").unlink()
    ev._save()
    assert sorted(load(state_dir).checkpoints) == [100, 200, 300]


def test_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    save(_state(1, 3), tmp_path)
    (tmp_path / ".state-abc.tmp").write_text('{"version": 1, "chec')  # killed mid-write
    assert sorted(load(tmp_path).checkpoints) == [100]
    assert list(tmp_path.glob(".state-*.tmp")) == []
