"""What the GPU collector remembers between scrapes: XID events, memory peaks, read errors.

Why: NVML reports XIDs as events and memory as an instant value, while Prometheus scrapes
every few seconds. An XID that fired between scrapes, or a memory spike the scrape missed,
must still show, so background threads record them here and each scrape renders the
counts (families.py). Every tracker is thread-safe: the sampler, the XID listener and
concurrent scrapes touch it at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.metrics_core import Metric

from exporters.collectors.gpu.families import read_error_families, xid_families
from exporters.collectors.gpu.readings import GpuSnapshot, XidEvent

log = logging.getLogger(__name__)


class XidTracker:
    """Counts XID events per (gpu, uuid, xid) and remembers when each was last seen."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._last: dict[tuple[str, str, str], float] = {}

    def record(self, events: Iterable[XidEvent]) -> None:
        now = self._clock()
        with self._lock:
            for event in events:
                key = (str(event.gpu), event.uuid, str(event.xid))
                self._counts[key] = self._counts.get(key, 0) + 1
                self._last[key] = now
                log.warning("GPU %s (%s): XID %s", event.gpu, event.uuid or "?", event.xid)

    def families(self) -> list[Metric]:
        with self._lock:
            return xid_families(self._counts, self._last)


class PeakTracker:
    """Highest memory used per GPU since the last `take()` (one take per scrape)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._peaks: dict[int, int] = {}

    def observe(self, samples: Mapping[int, int]) -> None:
        with self._lock:
            for index, used in samples.items():
                self._peaks[index] = max(used, self._peaks.get(index, used))

    def take(self) -> dict[int, int]:
        with self._lock:
            peaks, self._peaks = self._peaks, {}
        return peaks


class ErrorCounter:
    """Per-GPU read errors by reason: lost GPUs and fields that failed other than unsupported."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # concurrent scrapes may record at once
        self._counts: dict[tuple[str, str], int] = {}

    def record(self, snapshot: GpuSnapshot) -> None:
        keys = [(str(f.index), f.reason) for f in snapshot.failures]
        keys += [(str(g.index), r) for g in snapshot.gpus for r in g.field_errors.values()]
        with self._lock:
            for key in keys:
                self._counts[key] = self._counts.get(key, 0) + 1

    def families(self) -> list[Metric]:
        with self._lock:
            return read_error_families(self._counts)
