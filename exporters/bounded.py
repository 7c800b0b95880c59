"""One function run in its own long-lived worker thread, waited on for at most a deadline.

Why: a collector or a driver call (NVML) can hang, and a hung call in Python cannot be
cancelled. The exporter must still answer on time and must not start a new call beside
the hung one each scrape (one stuck thread per scrape would exhaust the process). So each
bounded thing owns exactly one daemon worker, and at most one call is in flight: a caller
either joins the call still running (`submit`, the collector framework) or fails fast
while it runs (`call`, the GPU collector's NVML read).

The worker is a daemon thread started on the first call and kept for the process's life:
starting a thread per call costs more than a small collector itself, and a daemon thread
(unlike a ThreadPoolExecutor's workers, joined at exit) cannot keep the process alive when
the call hangs.

    read = BoundedCall(reader.read, "gpu-nvml-read")
    snapshot = read.call(timeout=2.0)            # CallTimeout if late or still hung
    future = read.submit()                       # the call in flight, or a fresh one
    timed = future.result(timeout=remaining)     # Timed(value, seconds)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class CallTimeout(Exception):  # noqa: N818 - a state callers report (reason="timeout")
    """The call did not finish before its deadline, or an earlier call still hangs."""


@dataclass(frozen=True)
class Timed(Generic[T]):
    """What the function returned and how long it ran, measured in the worker."""

    value: T
    seconds: float


class BoundedCall(Generic[T]):
    """Runs `fn` in one daemon worker named `name`, with at most one call in flight."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Future[Timed[T]]] | None = None
        self._inflight: Future[Timed[T]] | None = None

    def submit(self) -> Future[Timed[T]]:
        """The call still in flight (a hung call is joined, not piled on), or a fresh one."""
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                return self._inflight
            return self._start()

    def call(self, timeout: float) -> T:
        """Run `fn` and wait at most `timeout` seconds for its value.

        While an earlier call still runs, fail at once: a second call would only queue
        behind the hung one. Exceptions of `fn` are raised here, in the caller's thread.
        """
        with self._lock:
            if self._inflight is not None and not self._inflight.done():
                raise CallTimeout(f"{self._name}: an earlier call is still running")
            future = self._start()
        try:
            return future.result(timeout).value
        except FutureTimeout:
            raise CallTimeout(f"{self._name}: no answer within {timeout:.3g} s") from None

    def _start(self) -> Future[Timed[T]]:
        """Queue a fresh call for the worker (started on first use); caller holds the lock."""
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(self._jobs,), name=self._name,
                             daemon=True).start()
        future: Future[Timed[T]] = Future()
        self._inflight = future
        self._jobs.put(future)
        return future

    def _work(self, jobs: queue.SimpleQueue[Future[Timed[T]]]) -> None:
        while True:
            future = jobs.get()
            start = time.perf_counter()
            try:
                value = self._fn()
            except BaseException as exc:  # handed to the caller's thread by the future
                future.set_exception(exc)
                continue
            future.set_result(Timed(value, time.perf_counter() - start))
