"""Finding complete `checkpoint-<step>/` directories as soon as they are written.

Why events and a rescan: the seeds polled every 5 minutes, so a checkpoint waited minutes
before anyone looked at it. Here inotify (the watchdog package) wakes the daemon on a file
event under the checkpoint directory, and a periodic rescan catches what events miss
(network file systems, a directory created before the watch, an overflowed event queue).
Events only wake the loop; what counts is always decided by a scan, so the two paths can
never disagree.

Only events that can change a checkpoint wake it: created, modified, attributes set
(a `touch` changes the mtime a signature holds), moved, deleted, closed after writing.
Why: a scan reads files (trainer_state.json) and an evaluation reads the weights; with every
event waking the loop, each read (opened, closed without writing) woke the next scan, and an
idle evaluator never slept. The filter is also handed to inotify itself, so reads are not
even reported (no IN_OPEN, IN_ACCESS or IN_CLOSE_NOWRITE in the watch mask; an atime update
is not an IN_ATTRIB).

Complete means: `trainer_state.json` is present and parses (the transformers Trainer writes
it after the weights), or, for a checkpoint saved without it, its files (names, sizes,
modification times) have not changed for `settle_seconds`. The clock is a parameter, so the
settle rule is tested without sleeping. A scan stats files but reads trainer_state.json only
when its inode, size or mtime changed since the last scan, so an idle rescan reads no file
contents, however many checkpoints are kept.
"""

from __future__ import annotations

import json
import logging
import re
import stat
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


STATE_FILE = "trainer_state.json"

# Events that can change a checkpoint (watchdog's event_type names). Reads report
# "opened" and "closed_no_write": never a reason to scan.
WAKING_EVENT_TYPES = frozenset({"created", "modified", "attrib", "moved", "deleted", "closed"})
_WAKING_EVENT_CLASSES = (
    "FileCreatedEvent", "DirCreatedEvent", "FileModifiedEvent", "DirModifiedEvent",
    "FileAttribEvent", "DirAttribEvent", "FileMovedEvent", "DirMovedEvent",
    "FileDeletedEvent", "DirDeletedEvent", "FileClosedEvent",
)

# (inode, size, mtime ns) of a trainer_state.json; None when it is absent.
FileKey = tuple[int, int, int] | None


def signature(directory: Path) -> Signature:
    """Every file under directory with its size and mtime (ns); changes when anything does."""
    entries: list[tuple[str, int, int]] = []
    for path in sorted(directory.rglob("*")):
        try:
            st = path.stat()
        except OSError:  # removed while we looked: the next scan sees the new state
            continue
        if stat.S_ISREG(st.st_mode):
            entries.append((str(path.relative_to(directory)), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def _state_key(directory: Path) -> FileKey:
    try:
        st = (directory / STATE_FILE).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _state_written(directory: Path) -> bool:
    """trainer_state.json exists and is complete JSON (not a half-written file)."""
    path = directory / STATE_FILE
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
        # step -> (trainer_state.json's key, whether it parsed): read once per version
        self._state_seen: dict[int, tuple[FileKey, bool]] = {}

    def scan(self) -> list[Candidate]:
        """Every checkpoint-<step> directory under root, newest step first."""
        found: list[Candidate] = []
        try:
            children = list(self.root.iterdir())
        except OSError:
            return []
        now = self.clock()
        steps: set[int] = set()
        for child in children:
            match = _NAME.match(child.name)
            if not match or not child.is_dir():
                continue
            step = int(match.group(1))
            try:
                sig = signature(child)
            except OSError:  # rotated away or replaced mid-walk: the next scan sees it
                continue
            steps.add(step)
            last_write = max((mtime / 1e9 for _n, _s, mtime in sig), default=0.0)
            if self._state_complete(step, child):
                complete = True
            else:
                seen = self._settling.get(step)
                if seen is None or seen[0] != sig:
                    self._settling[step] = (sig, now)
                    seen = self._settling[step]
                complete = bool(sig) and now - seen[1] >= self.settle_seconds
            found.append(Candidate(step, child, complete, sig, last_write))
        for gone in set(self._state_seen) - steps:  # rotated away: forget it
            del self._state_seen[gone]
        found.sort(key=lambda c: c.step, reverse=True)
        return found

    def _state_complete(self, step: int, directory: Path) -> bool:
        """`_state_written`, parsed again only when the file is another one or has changed.

        Why: trainer_state.json holds the whole log history (megabytes in a long run), and
        every kept checkpoint has one; reading them all on every rescan made an idle
        evaluator's cost grow with the checkpoints it keeps.
        """
        key = _state_key(directory)
        seen = self._state_seen.get(step)
        if seen is not None and key is not None and seen[0] == key:
            return seen[1]
        written = key is not None and _state_written(directory)
        self._state_seen[step] = (key, written)
        return written

    def next_settle_deadline(self) -> float | None:
        """Seconds until the earliest settling checkpoint may count as complete."""
        if not self._settling:
            return None
        now = self.clock()
        return max(0.0, min(t + self.settle_seconds - now for _s, t in self._settling.values()))

    def forget(self, step: int) -> None:
        self._settling.pop(step, None)
        self._state_seen.pop(step, None)


def _waking_event_classes() -> list[type]:
    """The watchdog event classes in WAKING_EVENT_TYPES that this watchdog version has."""
    from watchdog import events

    return [getattr(events, name) for name in _WAKING_EVENT_CLASSES if hasattr(events, name)]


class Watcher:
    """inotify on the checkpoint directory (recursive); an event that can change a
    checkpoint (WAKING_EVENT_TYPES) sets `wake`; reads never do.

    Starts once the directory exists (`ensure_started` is called on every loop turn), and
    falls back to rescans alone if inotify cannot be used (logged once). `last_event` is
    the latest event that woke the loop ("<type> <path>"), for the daemon's debug log.
    """

    def __init__(self, root: Path, wake: threading.Event) -> None:
        self.root = Path(root)
        self.wake = wake
        self.last_event: str | None = None
        self._observer: Any = None
        self._failed = False

    def _on_event(self, event: Any) -> None:
        """The handler's body: filtered again here, for observers that ignore the filter."""
        if event.event_type in WAKING_EVENT_TYPES:
            self.last_event = f"{event.event_type} {event.src_path}"
            self.wake.set()

    def ensure_started(self) -> bool:
        if self._observer is not None or self._failed or not self.root.is_dir():
            return self._observer is not None
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        on_event = self._on_event

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                on_event(event)

        observer = Observer()
        try:
            try:
                observer.schedule(_Handler(), str(self.root), recursive=True,
                                  event_filter=_waking_event_classes())
            except TypeError:  # a watchdog without event_filter: the handler filters alone
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
