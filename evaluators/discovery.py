"""Finding complete `checkpoint-<step>/` directories as soon as they are written.

Why events and a rescan: the seeds polled every 5 minutes, so a checkpoint waited minutes
before anyone looked at it. Here inotify (the watchdog package) wakes the daemon on any file
event under the checkpoint directory, and a periodic rescan catches what events miss
(network file systems, a directory created before the watch, an overflowed event queue).
Events only wake the loop; what counts is always decided by a scan, so the two paths can
never disagree.

Complete means: `trainer_state.json` is present and parses (the transformers Trainer writes
it after the weights), or, for a checkpoint saved without it, its files (names, sizes,
modification times) have not changed for `settle_seconds`. The clock is a parameter, so the
settle rule is tested without sleeping.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_NAME = re.compile(r"^checkpoint-(\d+)$")

Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Candidate:
    """A checkpoint directory seen by a scan."""

    step: int
    path: Path
    complete: bool
    signature: Signature
    last_write: float  # newest modification time of its files (unix seconds)


def signature(directory: Path) -> Signature:
    """Every file under directory with its size and mtime (ns); changes when anything does."""
    entries: list[tuple[str, int, int]] = []
    for path in sorted(directory.rglob("*")):
        try:
            st = path.stat()
        except OSError:  # removed while we looked: the next scan sees the new state
            continue
        if path.is_file():
            entries.append((str(path.relative_to(directory)), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def _state_written(directory: Path) -> bool:
    """trainer_state.json exists and is complete JSON (not a half-written file)."""
    path = directory / "trainer_state.json"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


class Scanner:
    """Lists checkpoint directories and decides which are complete (see module docstring)."""

    def __init__(self, root: Path, settle_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.settle_seconds = settle_seconds
        self.clock = clock
        # step -> (signature, clock time it was first seen unchanged)
        self._settling: dict[int, tuple[Signature, float]] = {}

    def scan(self) -> list[Candidate]:
        """Every checkpoint-<step> directory under root, newest step first."""
        found: list[Candidate] = []
        try:
            children = list(self.root.iterdir())
        except OSError:
            return []
        now = self.clock()
        for child in children:
            match = _NAME.match(child.name)
            if not match or not child.is_dir():
                continue
            step = int(match.group(1))
            try:
                sig = signature(child)
            except OSError:  # rotated away or replaced mid-walk: the next scan sees it
                continue
            last_write = max((mtime / 1e9 for _n, _s, mtime in sig), default=0.0)
            if _state_written(child):
                complete = True
            else:
                seen = self._settling.get(step)
                if seen is None or seen[0] != sig:
                    self._settling[step] = (sig, now)
                    seen = self._settling[step]
                complete = bool(sig) and now - seen[1] >= self.settle_seconds
            found.append(Candidate(step, child, complete, sig, last_write))
        found.sort(key=lambda c: c.step, reverse=True)
        return found

    def next_settle_deadline(self) -> float | None:
        """Seconds until the earliest settling checkpoint may count as complete."""
        if not self._settling:
            return None
        now = self.clock()
        return max(0.0, min(t + self.settle_seconds - now for _s, t in self._settling.values()))

    def forget(self, step: int) -> None:
        self._settling.pop(step, None)


class Watcher:
    """inotify on the checkpoint directory (recursive); each event sets `wake`.

    Starts once the directory exists (`ensure_started` is called on every loop turn), and
    falls back to rescans alone if inotify cannot be used (logged once).
    """

    def __init__(self, root: Path, wake: threading.Event) -> None:
        self.root = Path(root)
        self.wake = wake
        self._observer: Any = None
        self._failed = False

    def ensure_started(self) -> bool:
        if self._observer is not None or self._failed or not self.root.is_dir():
            return self._observer is not None
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self.wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = Observer()
        try:
            observer.schedule(_Handler(), str(self.root), recursive=True)
            observer.daemon = True
            observer.start()
        except OSError as exc:
            self._failed = True
            log.warning("cannot watch %s (%s); relying on periodic rescans", self.root, exc)
            return False
        self._observer = observer
        log.info("watching %s for new checkpoints", self.root)
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
