"""Recorded GPU readings: the JSON recording format and the reader that replays it.

Why: NVML needs a GPU and a driver, and its failures (a lost GPU, a driver reload, a stuck
call) cannot be produced on demand. A recording replays them, so the conversion to metrics,
the XID and peak logic, and the whole exporter can run on machines without a GPU (tests,
dashboard demos: `exporter.gpu_readings_file`).

Recording format (JSON, written by `scripts/record_gpu_fixture.py`, documented in
docs/gpu.md):

    {"comment": "free text",
     "snapshots": [{"driver_version": "...", "cuda_version": "...",
                    "gpus": [{"index": 0, "uuid": "GPU-...", ...GpuReading fields...}],
                    "failures": [{"index": 1, "reason": "gpu_is_lost", "uuid": ""}]},
                   {"unavailable": "driver_not_loaded"}],
     "memory_samples": [{"0": 123}, ...],
     "xid_batches": [[{"gpu": 0, "uuid": "GPU-...", "xid": 79}], []]}

Each `read()` returns the next snapshot (the last one repeats); a snapshot that is only
`{"unavailable": reason}` makes that read report NVML unavailable.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from exporters.collectors.gpu.readings import (
    GpuFailure,
    GpuReading,
    GpuSnapshot,
    GpuUnavailable,
    ProcessReading,
    XidEvent,
)

T = TypeVar("T")


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Build a dataclass from a JSON object, naming the key when it is unknown."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {cls.__name__}")
    return cls(**data)


def gpu_reading_from_dict(data: Mapping[str, Any], where: str = "gpu") -> GpuReading:
    """Inverse of dataclasses.asdict for GpuReading (processes become ProcessReading)."""
    data = dict(data)
    procs = data.get("processes")
    if procs is not None:
        data["processes"] = [
            _build(ProcessReading, p, f"{where}.processes[{i}]") for i, p in enumerate(procs)
        ]
    return _build(GpuReading, data, where)


def snapshot_from_dict(data: Mapping[str, Any], where: str = "snapshot") -> GpuSnapshot:
    """Inverse of snapshot_to_dict."""
    data = dict(data)
    data["gpus"] = [
        gpu_reading_from_dict(g, f"{where}.gpus[{i}]") for i, g in enumerate(data.get("gpus", []))
    ]
    data["failures"] = [
        _build(GpuFailure, f, f"{where}.failures[{i}]")
        for i, f in enumerate(data.get("failures", []))
    ]
    return _build(GpuSnapshot, data, where)


def snapshot_to_dict(snapshot: GpuSnapshot) -> dict[str, Any]:
    """JSON-ready form of a snapshot (the recording format)."""
    return dataclasses.asdict(snapshot)


# --------------------------------------------------------------------------- recorded


@dataclass
class Recording:
    """A recorded sequence of reads; see the module docstring for the JSON form."""

    snapshots: list[GpuSnapshot | GpuUnavailable]
    memory_samples: list[dict[int, int]] = field(default_factory=list)
    xid_batches: list[list[XidEvent]] = field(default_factory=list)


def recording_from_dict(data: Mapping[str, Any], where: str = "recording") -> Recording:
    """Parse a recording, rejecting unknown keys so a typo in a fixture is caught."""
    allowed = {"comment", "snapshots", "memory_samples", "xid_batches"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}")
    snapshots: list[GpuSnapshot | GpuUnavailable] = []
    for i, snap in enumerate(data.get("snapshots", [])):
        if set(snap) == {"unavailable"}:
            snapshots.append(GpuUnavailable(str(snap["unavailable"])))
        else:
            snapshots.append(snapshot_from_dict(snap, f"{where}.snapshots[{i}]"))
    if not snapshots:
        raise ValueError(f"{where}: 'snapshots' must hold at least one snapshot")
    samples = [{int(k): int(v) for k, v in s.items()} for s in data.get("memory_samples", [])]
    batches = [
        [_build(XidEvent, e, f"{where}.xid_batches[{i}]") for e in batch]
        for i, batch in enumerate(data.get("xid_batches", []))
    ]
    return Recording(snapshots, samples, batches)


class RecordedReader:
    """Replays recorded readings (tests, demos): `exporter.gpu_readings_file: path.json`.

    Reads advance through the snapshots, memory samples and XID batches in order and then
    hold the last snapshot and sample (XID batches are delivered once each), so a test can
    script values over time while a long-running demo exporter keeps serving stable data.
    """

    def __init__(self, recording: Recording, *, sleep: Callable[[float], Any] | None = None):
        self._rec = recording
        self._lock = threading.Lock()
        self._reads = 0
        self._samples = 0
        self._batches = 0
        self._closed = threading.Event()
        self._sleep = sleep or self._closed.wait

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedReader:
        """Load a recording written by scripts/record_gpu_fixture.py (or by hand)."""
        with open(path, encoding="utf-8") as fh:
            return cls(recording_from_dict(json.load(fh), str(path)))

    @property
    def progress(self) -> tuple[int, int, int]:
        """(reads, memory samples, XID batches) handed out so far: lets a test wait on them."""
        with self._lock:
            return (self._reads, self._samples, self._batches)

    def _current(self) -> GpuSnapshot | GpuUnavailable:
        return self._rec.snapshots[min(self._reads, len(self._rec.snapshots)) - 1]

    def read(self) -> GpuSnapshot:
        with self._lock:
            self._reads += 1
            item = self._current()
        if isinstance(item, GpuUnavailable):
            raise GpuUnavailable(item.reason)
        return item

    def sample_memory(self) -> dict[int, int]:
        with self._lock:
            if self._rec.memory_samples:
                i = min(self._samples, len(self._rec.memory_samples) - 1)
                self._samples += 1
                return dict(self._rec.memory_samples[i])
            self._samples += 1
            item = self._current() if self._reads else self._rec.snapshots[0]
        if isinstance(item, GpuUnavailable):
            return {}
        return {g.index: g.memory_used_bytes for g in item.gpus if g.memory_used_bytes is not None}

    def wait_xid_events(self, timeout_seconds: float) -> list[XidEvent]:
        with self._lock:
            if self._batches < len(self._rec.xid_batches):
                self._batches += 1
                return list(self._rec.xid_batches[self._batches - 1])
        self._sleep(timeout_seconds)
        return []

    def close(self) -> None:
        self._closed.set()
