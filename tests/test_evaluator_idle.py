"""An idle evaluator sleeps, wakes on a new checkpoint, and is ready only with its suite.

Why these tests: each scan read trainer_state.json, watchdog reported the read (opened,
closed without writing), and the handler woke the loop for any event, so an evaluator with
nothing to do scanned again and again. The watcher is checked on real inotify with real
reads; the daemon is the real `tunewatch evaluate` process, read over HTTP.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from services import Tunewatch, http_get, wait_for
from test_evaluator_daemon import WRITE_ORDER, copy_checkpoint

from evaluators.discovery import Scanner, Watcher

RESCAN_SECONDS = 1.0
IDLE_WINDOW_SECONDS = 5 * RESCAN_SECONDS


class RecordingWake(threading.Event):
    """The loop's wake event, remembering the watcher's event behind each wake-up."""

    def __init__(self) -> None:
        super().__init__()
        self.watcher: Watcher | None = None
        self.woken_by: list[str] = []

    def set(self) -> None:
        if self.watcher is not None and self.watcher.last_event is not None:
            self.woken_by.append(self.watcher.last_event)
        super().set()


def test_reads_never_wake_the_watcher_and_writes_do(tmp_path: Path):
    root = tmp_path / "checkpoints"
    ckpt = root / "checkpoint-1"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 1}')
    (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
    wake = RecordingWake()
    watcher = Watcher(root, wake)
    wake.watcher = watcher
    assert watcher.ensure_started()
    try:
        for _ in range(20):  # what scans and evaluations do: list, stat, open, read, close
            Scanner(root, settle_seconds=0.0).scan()
            for path in ckpt.iterdir():
                path.read_bytes()
        # inotify delivers in order: once the sentinel's event is here, every event the
        # reads caused has been handled before it.
        (root / "sentinel").write_text("x")
        wait_for(lambda: any(e.endswith("sentinel") for e in wake.woken_by), 10,
                 "the sentinel's event")
        assert not [e for e in wake.woken_by if "checkpoint-1" in e]
        # A write into the checkpoint wakes it.
        with (ckpt / "model.safetensors").open("ab") as fh:
            fh.write(b"more")
        wait_for(lambda: any("checkpoint-1" in e for e in wake.woken_by), 10,
                 "the write's event")
    finally:
        watcher.stop()


def test_scanner_reads_trainer_state_only_when_it_changed(tmp_path: Path):
    ckpt = tmp_path / "checkpoint-5"
    ckpt.mkdir()
    state = ckpt / "trainer_state.json"
    state.write_text('{"global_step": 5}')
    before = state.stat()
    scanner = Scanner(tmp_path, settle_seconds=3600.0)
    assert scanner.scan()[0].complete
    # Not JSON any more, but the same file, size and mtime: a re-read would say incomplete.
    with state.open("r+") as fh:
        fh.write("X")
    os.utime(state, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert scanner.scan()[0].complete  # not read again
    os.utime(state, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert not scanner.scan()[0].complete  # changed: read, and found broken


def _scans(ev: Tunewatch) -> dict[str, float]:
    out: dict[str, float] = {}
    prefix = 'tunewatch_eval_scans_total{reason="'
    for line in ev.metrics().splitlines():
        if line.startswith(prefix):
            reason, _, value = line[len(prefix):].partition('"} ')
            out[reason] = float(value)
    return out


def _sample(ev: Tunewatch, name: str) -> float | None:
    for line in ev.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def _ready(ev: Tunewatch) -> int:
    return http_get(ev.url + "/-/ready")[0]


@pytest.mark.slow
def test_idle_daemon_sleeps_and_is_ready_with_its_suite(tiny_run, tmp_path: Path):
    checkpoints = tmp_path / "checkpoints"
    state_dir = tmp_path / "state"
    c100, c200, c300 = tiny_run.checkpoints
    copy_checkpoint(c100, checkpoints / "checkpoint-100")
    copy_checkpoint(c200, checkpoints / "checkpoint-200")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    env.update({"TUNEWATCH_RUN": "idle-test", "TUNEWATCH_EVALUATOR__DEVICE": "cpu",
                "TUNEWATCH_EVALUATOR__RESCAN_SECONDS": str(RESCAN_SECONDS)})
    once = subprocess.run(
        [sys.executable, "-m", "tunewatch", "evaluate", "--once", "--checkpoints",
         str(checkpoints), "--data", str(tiny_run.data_dir), "--state-dir", str(state_dir),
         "--limit", "30", "--web.listen-address", "127.0.0.1:0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300)
    assert once.returncode == 0, once.stderr

    # The daemon over the evaluated directory, its suite not there yet.
    data = tmp_path / "data"
    ev = Tunewatch("evaluator", tmp_path)
    ev.start(["evaluate", "--checkpoints", str(checkpoints), "--data", str(data),
              "--state-dir", str(state_dir), "--limit", "30"], env=env)
    try:
        wait_for(lambda: _scans(ev).get("startup") == 1, 60, "the first scan")
        assert _ready(ev) == 503  # state read, a scan done, but no suite: not ready
        assert _sample(ev, "tunewatch_eval_checkpoint_step") == 200  # the state's figures
        staging = tmp_path / "data-staging"
        shutil.copytree(tiny_run.data_dir, staging)
        staging.rename(data)  # the suite appears whole
        wait_for(lambda: _ready(ev) == 200, 60, "readiness once the suite is there")

        # Idle: nothing but the periodic rescan, at most one per rescan interval.
        wait_for(lambda: _scans(ev)["rescan"] >= 1, 60, "a periodic rescan")
        started = time.monotonic()
        before = _scans(ev)
        time.sleep(IDLE_WINDOW_SECONDS)
        after = _scans(ev)
        elapsed = time.monotonic() - started
        grown = {r: after[r] - before[r] for r in after}
        assert sum(grown.values()) <= math.floor(elapsed / RESCAN_SECONDS) + 1, grown
        assert {r: n for r, n in grown.items() if r != "rescan" and n} == {}, grown
        assert _sample(ev, "tunewatch_eval_evaluations_total") == 0

        # A new checkpoint wakes it by its file events and is evaluated.
        for name in [*WRITE_ORDER, "trainer_state.json"]:  # the Trainer's order
            copy_checkpoint(c300, checkpoints / "checkpoint-300", [name])
        wait_for(lambda: _sample(ev, "tunewatch_eval_evaluations_total") == 1, 120,
                 "the new checkpoint's evaluation")
        assert _scans(ev)["event"] > after["event"]
        assert _sample(ev, "tunewatch_eval_checkpoint_step") == 300
        assert _ready(ev) == 200
    finally:
        ev.stop()
