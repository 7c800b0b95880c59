"""Fault: a status file or a checkpoint directory is replaced while it is being read.

Why: the trainer rewrites its status file every few steps (atomically if it follows the
contract, in place if it does not) and rotates checkpoints away (save_total_limit) while the
sidecar, the host exporter and the evaluator read them. A reader must never raise, never
publish a value that was not written, and must catch up with the last good version.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

from evaluators.discovery import Scanner
from exporters.collectors.files import scan_checkpoints
from exporters.training.status_collector import StatusFileCollector

DURATION = 1.5  # seconds of concurrent writing per test


def _step(collector: StatusFileCollector) -> float | None:
    collector.refresh()
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == "tunewatch_training_step":
                return float(sample.value)
    return None


def test_status_file_replaced_while_read(tmp_path: Path) -> None:
    path = tmp_path / "training_status.json"
    path.write_text(json.dumps({"state": "training", "step": 0}))
    collector = StatusFileCollector(path, run="r1")
    stop = threading.Event()
    written: set[int] = {0}

    def writer() -> None:
        step = 0
        while not stop.is_set():
            step += 1
            written.add(step)
            text = json.dumps({"state": "training", "step": step, "loss": 1.0 / step,
                               "padding": "x" * 4000})
            if step % 2:  # the contract: temporary file, then rename
                tmp = tmp_path / ".status.tmp"
                tmp.write_text(text)
                os.replace(tmp, path)
            else:  # a careless trainer: truncate and write in two parts, in place
                with path.open("w") as fh:
                    fh.write(text[: len(text) // 2])
                    fh.flush()
                    fh.write(text[len(text) // 2 :])

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[float] = []
    deadline = time.monotonic() + DURATION
    try:
        while time.monotonic() < deadline:
            value = _step(collector)
            if value is not None:
                seen.append(value)
    finally:
        stop.set()
        thread.join()
    assert seen, "the reader never saw a step"
    assert {int(v) for v in seen} <= written  # never a value that was not written
    assert seen == sorted(seen)  # half-written versions are skipped, never go backwards
    path.write_text(json.dumps({"state": "training", "step": 123456}))
    assert _step(collector) == 123456  # catches up with the last good version


def _write_checkpoint(directory: Path, size: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.safetensors").write_bytes(b"\0" * size)
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": 100}))


def test_checkpoint_replaced_while_scanned(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    _write_checkpoint(root / "checkpoint-100", 1000)
    stop = threading.Event()
    errors: list[BaseException] = []

    def rotate() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            staging = tmp_path / f"staging-{n}"
            _write_checkpoint(staging, 1000 + n)
            shutil.rmtree(root / "checkpoint-100", ignore_errors=True)  # rotated away
            _write_checkpoint(root / f"checkpoint-{100 + n}", 10)        # a new one appears
            os.rename(staging, root / "checkpoint-100")                  # and is replaced
            shutil.rmtree(root / f"checkpoint-{100 + n}", ignore_errors=True)

    thread = threading.Thread(target=rotate)
    thread.start()
    scanner = Scanner(root, settle_seconds=0.0)
    scans = 0
    deadline = time.monotonic() + DURATION
    try:
        while time.monotonic() < deadline:
            try:
                candidates = scanner.scan()
                stats = scan_checkpoints(str(root))
            except BaseException as exc:
                errors.append(exc)
                break
            scans += 1
            assert all(c.step >= 100 for c in candidates)
            assert stats.files <= 2
    finally:
        stop.set()
        thread.join()
    assert not errors, f"a scan raised while the checkpoint was replaced: {errors[0]!r}"
    assert scans > 10
    final = scanner.scan()
    assert [c.step for c in final] == [100] and final[0].complete
