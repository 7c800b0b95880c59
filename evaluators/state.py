"""The evaluator's memory on disk: what was evaluated, and the outcomes paired tests need.

Why on disk: a restart must neither evaluate a checkpoint twice nor lose the baselines
(the trainer may keep only the last few checkpoints, so the previous and the best one may be
gone from disk by the time the next one is compared with them). The file is JSON, written
atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves either
the old or the new state, never half of one.

Layout of `<state_dir>/state.json` (docs/evaluator.md):

    {"version": 1,
     "checkpoints": {"300": {"checkpoint": "checkpoint-300", "status": "ok", "attempts": 1,
                             "exact_match": 0.42, "composite_score": 0.61, ...}},
     "outcomes": {"300": {"<example key>": [true, "easy"], ...}},   # last K and the best
     "published": {...}}                                            # the latest measurement
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
FILE_NAME = "state.json"


class StateError(Exception):
    """The state file exists but cannot be used; the message names it."""


@dataclass
class State:
    """In-memory form of the state file; steps are ints here, strings in JSON."""

    checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[int, dict[str, tuple[bool, str]]] = field(default_factory=dict)
    published: dict[str, Any] = field(default_factory=dict)

    def succeeded(self) -> list[int]:
        return sorted(s for s, e in self.checkpoints.items() if e.get("status") == "ok")

    def best_step(self, below: int | None = None) -> int | None:
        """Highest exact match among evaluated checkpoints with outcomes (ties: later step)."""
        steps = [s for s in self.succeeded() if s in self.outcomes
                 and (below is None or s < below)]
        if not steps:
            return None
        return max(steps, key=lambda s: (self.checkpoints[s]["exact_match"], s))

    def previous_step(self, step: int) -> int | None:
        """The highest step below `step` whose outcomes are kept."""
        lower = [s for s in self.outcomes if s < step and
                 self.checkpoints.get(s, {}).get("status") == "ok"]
        return max(lower) if lower else None

    def prune(self, last_k: int) -> None:
        """Keep outcomes of the last K evaluated checkpoints and the best one only."""
        keep = set(self.succeeded()[-last_k:])
        best = self.best_step()
        if best is not None:
            keep.add(best)
        for step in list(self.outcomes):
            if step not in keep:
                del self.outcomes[step]


def to_json(state: State) -> dict[str, Any]:
    return {
        "version": VERSION,
        "checkpoints": {str(s): e for s, e in sorted(state.checkpoints.items())},
        "outcomes": {
            str(s): {k: [em, d] for k, (em, d) in o.items()}
            for s, o in sorted(state.outcomes.items())
        },
        "published": state.published,
    }


def from_json(data: Any, where: Path) -> State:
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise StateError(f"{where}: not a version {VERSION} evaluator state file")
    try:
        return State(
            checkpoints={int(s): dict(e) for s, e in data.get("checkpoints", {}).items()},
            outcomes={
                int(s): {k: (bool(v[0]), str(v[1])) for k, v in o.items()}
                for s, o in data.get("outcomes", {}).items()
            },
            published=dict(data.get("published", {})),
        )
    except (TypeError, ValueError, IndexError, AttributeError) as exc:
        raise StateError(f"{where}: malformed evaluator state ({exc})") from exc


def remove_stale_temporaries(state_dir: Path) -> int:
    """Delete `.state-*.tmp` files a killed writer left behind; how many were removed.

    Why: a SIGKILL (or power loss) between mkstemp and rename leaves a temporary file that
    nothing else would ever delete; on a small state volume these would fill the disk.
    Called at load time, when no save of this process can be in flight.
    """
    removed = 0
    for tmp in Path(state_dir).glob(".state-*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    if removed:
        log.warning("removed %d unfinished state file(s) left in %s", removed, state_dir)
    return removed


def load(state_dir: Path) -> State:
    """The saved state, or an empty one when there is none yet."""
    path = Path(state_dir) / FILE_NAME
    if path.parent.is_dir():
        remove_stale_temporaries(path.parent)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return State()
    except OSError as exc:
        raise StateError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    return from_json(data, path)


def save(state: State, state_dir: Path) -> None:
    """Write atomically: a temporary file in the same directory, fsync, rename, fsync dir."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(to_json(state), separators=(",", ":"), sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, directory / FILE_NAME)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
