"""The collector framework: isolated collectors, each bounded by a timeout, on every scrape.

Why (node_exporter's pattern): one broken source must never cost the others. Each collector
runs in its own worker thread with a deadline shared by the scrape; what it yields is
published only if it finished in time and without raising. Whatever happens, the scrape
answers, and says per collector whether it worked and how long it took:

    tunewatch_exporter_collector_success{collector="gpu"} 1
    tunewatch_exporter_collector_duration_seconds{collector="gpu"} 0.0123
    tunewatch_exporter_collector_failures_total{collector="gpu",reason="timeout"} 0

A collector that hangs keeps its worker (exporters/bounded.py); later scrapes join the call
still in flight (so a hung collector holds one thread, not one per scrape) and report
`timeout` until it returns.

A collector is any object with `name`, `collect() -> Iterable[Metric]` and `close()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.bounded import BoundedCall, Timed

log = logging.getLogger("tunewatch.collectors")

FAILURE_REASONS = ("error", "timeout")


class Collector(Protocol):
    """What the framework runs; `collect` is called once per scrape, in a worker thread."""

    name: str

    def collect(self) -> Iterable[Metric]: ...

    def close(self) -> None: ...


class _Slot:
    """One collector, its bounded worker (exporters/bounded.py) and its failure counts."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self.call = BoundedCall(lambda: list(collector.collect()),
                                f"collector-{collector.name}")
        self.lock = threading.Lock()
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.last_error = ""


class CollectorSet:
    """A prometheus_client collector that runs the enabled collectors in isolation."""

    def __init__(self, collectors: list[Collector], timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        self.slots = [_Slot(c) for c in collectors]
        self._collected = threading.Event()

    def ready(self) -> bool:
        """True once one whole collection has finished: `/-/ready` means real data."""
        return self._collected.is_set()

    def warm_up(self) -> None:
        """Run the first collection in the background, so readiness (and a driver's slow
        first call, e.g. NVML's init) does not wait for Prometheus's first scrape."""
        threading.Thread(target=lambda: list(self.collect()), daemon=True,
                         name="collector-warm-up").start()

    @property
    def names(self) -> list[str]:
        return [s.collector.name for s in self.slots]

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not run a collector."""
        return []

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        futures = [(slot, slot.call.submit()) for slot in self.slots]
        success = GaugeMetricFamily(
            "tunewatch_exporter_collector_success",
            "1 if the collector finished this scrape in time without an error, else 0.",
            labels=["collector"])
        duration = GaugeMetricFamily(
            "tunewatch_exporter_collector_duration_seconds",
            "Seconds the collector took this scrape (the timeout when it timed out).",
            labels=["collector"])
        for slot, future in futures:
            remaining = max(0.0, self.timeout_seconds - (time.perf_counter() - start))
            families, seconds, ok = self._result(slot, future, remaining)
            yield from families
            success.add_metric([slot.collector.name], 1.0 if ok else 0.0)
            duration.add_metric([slot.collector.name], seconds)
        yield success
        yield duration
        yield self._failures()
        self._collected.set()

    def _result(self, slot: _Slot, future: Future[Timed[list[Metric]]],
                remaining: float) -> tuple[list[Metric], float, bool]:
        name = slot.collector.name
        try:
            timed = future.result(timeout=remaining)
        except FutureTimeout:
            self._fail(slot, "timeout", f"no answer within {self.timeout_seconds:g} s")
            return [], self.timeout_seconds, False
        except Exception as exc:
            self._fail(slot, "error", f"{type(exc).__name__}: {exc}", exc)
            return [], 0.0, False
        if slot.last_error:
            log.info("collector %s works again", name)
            slot.last_error = ""
        return timed.value, timed.seconds, True

    def _fail(self, slot: _Slot, reason: str, message: str,
              exc: BaseException | None = None) -> None:
        with slot.lock:
            slot.failures[reason] += 1
        if message != slot.last_error:
            # Log each new cause once (with its traceback), not once per scrape.
            log.error("collector %s failed (%s): %s", slot.collector.name, reason, message,
                      exc_info=exc)
            slot.last_error = message

    def _failures(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "tunewatch_exporter_collector_failures",
            "Scrapes in which the collector failed, by reason (error, timeout).",
            labels=["collector", "reason"])
        for slot in self.slots:
            with slot.lock:
                for reason, count in slot.failures.items():
                    family.add_metric([slot.collector.name, reason], count)
        return family

    def close(self) -> None:
        """Close every collector; a hung call is left behind in its daemon thread."""
        for slot in self.slots:
            try:
                slot.collector.close()
            except Exception:
                log.exception("collector %s failed to close", slot.collector.name)
