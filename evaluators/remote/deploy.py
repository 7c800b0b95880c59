"""Making the best checkpoint the served one, and undoing it in one command.

Why: seed 000 deployed checkpoints by hand (`curl /models/register`, `/models/set_active`)
and its rollback plan was to remember the previous model id. Here, with
`evaluator.remote.deploy_best`, the evaluator deploys the best checkpoint after each
evaluation and appends every change to a JSON-lines history (`deploy_history`), one record
per deployment or rollback:

    {"at": 1764480000.0, "action": "deploy", "model_id": "demo-checkpoint-300", "step": 300,
     "checkpoint": "checkpoint-300", "path": "...", "previous": "Qwen3-0.6B"}
    {"at": 1764480100.0, "action": "rollback", "model_id": "Qwen3-0.6B",
     "previous": "demo-checkpoint-300"}

The history is a stack: a deploy pushes, a rollback pops and re-activates what the popped
deployment replaced. A rolled-back model id is not deployed again automatically (a person
decided against it); a later, better checkpoint is. `tunewatch deploy status` and
`tunewatch deploy rollback` read the same file (docs/remote.md): `deploy_target` is the
server and history they act on, `status` what they print.

The daemon deploys and a person rolls back from another process: each change holds an
exclusive lock on `<history>.lock` (flock) from reading the history to appending its record,
so a rollback started during a deployment waits for it and undoes it, instead of acting on
the history as it was before.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.errors import EvaluationError
from evaluators.remote.client import InferenceClient
from tunewatch.core.config import EvaluatorConfig, RemoteConfig
from tunewatch.core.errors import UsageError

log = logging.getLogger(__name__)

DEPLOY_FAILURE_REASONS = ("remote", "checkpoint_missing", "history_write")


class DeployError(Exception):
    """A rollback that cannot be done (nothing deployed, nothing before it), or a change
    whose history cannot be locked."""


def history_path(ev: EvaluatorConfig) -> Path:
    """evaluator.remote.deploy_history, or deployments.jsonl under evaluator.state_dir."""
    if ev.remote.deploy_history:
        return Path(ev.remote.deploy_history)
    return Path(ev.state_dir) / "deployments.jsonl"


def deploy_target(ev: EvaluatorConfig, url: str | None,
                  history: str | None) -> tuple[RemoteConfig, Path]:
    """The server (`url` over evaluator.remote.url) and the history file (`history` over
    history_path) that `tunewatch deploy` acts on; UsageError without a server URL."""
    url = url if url is not None else ev.remote.url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"no inference server URL (got {url!r}): set evaluator.remote.url"
                         " or pass --url http://HOST:PORT")
    remote = dataclasses.replace(ev.remote, url=url)
    return remote, Path(history) if history else history_path(ev)


@dataclass(frozen=True)
class History:
    """The deployment history replayed: what is deployed, and what was refused."""

    records: list[dict[str, Any]]
    stack: list[dict[str, Any]]
    rejected: set[str]

    @property
    def deployed(self) -> dict[str, Any] | None:
        """The deployment in force (the top of the stack), None when there is none."""
        return self.stack[-1] if self.stack else None

    @property
    def intended(self) -> str | None:
        """The model the server should serve: the deployed one, or what the last rollback
        went back to when it emptied the stack; None when the history says nothing."""
        if self.stack:
            return str(self.stack[-1]["model_id"])
        rollbacks = [r for r in self.records if r["action"] == "rollback"]
        return str(rollbacks[-1]["model_id"]) if rollbacks else None


def _valid(record: Any) -> str | None:
    """Why a history record cannot be used, None when it can."""
    if not isinstance(record, dict) or record.get("action") not in ("deploy", "rollback"):
        return "not a deploy or rollback record"
    if not isinstance(record.get("model_id"), str) or not record["model_id"]:
        return "no model_id"
    step, at = record.get("step"), record.get("at", 0)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return "step is not an integer"
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        return "at is not a number"
    return None


def read_history(path: Path) -> History:
    """Replay the history file; a line that is not a JSON object is named and skipped."""
    records: list[dict[str, Any]] = []
    if path.exists():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                log.error("%s:%d: not JSON (%s); line skipped", path, number, exc.msg)
                continue
            problem = _valid(record)
            if problem is None:
                records.append(record)
            else:
                log.error("%s:%d: %s; line skipped", path, number, problem)
    stack: list[dict[str, Any]] = []
    rejected: set[str] = set()
    for record in records:
        if record["action"] == "deploy":
            stack.append(record)
        elif stack:
            rejected.add(str(stack.pop()["model_id"]))
    return History(records, stack, rejected)


def _append(path: Path, record: dict[str, Any]) -> None:
    """One line, flushed and fsynced: the record of a change the server already made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def history_lock(path: Path) -> Iterator[None]:
    """Exclusive, across processes, for one change of the history at `path` (its server
    switch included); waits, saying so, while another process holds it. The lock file is
    left in place (removing it would race a waiter). DeployError when it cannot be made."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_path.open("a", encoding="utf-8")
    except OSError as exc:
        raise DeployError(f"cannot lock the deployment history: {lock_path}: {exc}") from exc
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process's deployment or rollback (%s)", lock_path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Deployer:
    """Deploys checkpoints to the inference server and keeps the history (thread-safe).

    One deployment or rollback at a time (`_deploy_lock` in this process, `history_lock`
    across processes, both held across the HTTP calls); scrapes read the cached history
    and counters under `_lock` and never wait for the server.
    """

    def __init__(self, client: InferenceClient, history_path: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.history_path = history_path
        self.clock = clock
        self._deploy_lock = threading.Lock()
        self._lock = threading.Lock()
        self.failures = dict.fromkeys(DEPLOY_FAILURE_REASONS, 0)
        self.original: str | None = None
        self._cached: tuple[tuple[int, int], History] | None = None

    def _history(self) -> History:
        """The replayed history, re-read only when the file changed (scrapes call this)."""
        try:
            st = self.history_path.stat()
            key = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            key = (0, -1)
        with self._lock:
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, read_history(self.history_path))
            return self._cached[1]

    def note_served(self) -> None:
        """Remember what the server serves before tunewatch changes it (call once at start).

        The first deployment records it as what it replaced, even when an evaluation with
        remote.activate has switched the server in between. Never raises.
        """
        try:
            self.original = self.client.active_model()
        except EvaluationError as exc:
            log.warning("cannot ask %s what it serves: %s", self.client.base, exc)

    def deploy(self, model_id: str, path: Path, step: int) -> bool:
        """Make `model_id` (checkpoint at `path`) the served model; True if it changed.

        Also puts the intended model back when something else is served (an evaluation
        with remote.activate switched it), without a new history record; a model a person
        rolled back is not deployed again.
        """
        with self._deploy_lock, history_lock(self.history_path):
            history = self._history()
            if model_id in history.rejected:
                log.info("not deploying %s: it was rolled back", model_id)
                self._serve(history.intended)
                return False
            served = self.client.active_model()
            deployed = history.deployed
            if deployed is not None and deployed["model_id"] == model_id:
                self._serve(model_id, served)
                return False
            if not path.is_dir():
                self._count("checkpoint_missing")
                log.error("cannot deploy %s: %s is gone", model_id, path)
                self._serve(history.intended, served)
                return False
            self.client.register(model_id, str(path), f"step{step},tunewatch,best")
            self.client.set_active(model_id)
            previous = deployed["model_id"] if deployed is not None else (
                self.original or served)
            if previous == model_id:
                previous = None
            _append(self.history_path, {
                "at": self.clock(), "action": "deploy", "model_id": model_id, "step": step,
                "checkpoint": path.name, "path": str(path), "previous": previous})
            log.info("deployed %s (step %d) to %s, replacing %s", model_id, step,
                     self.client.base, previous or "no model")
            return True

    def _serve(self, model_id: str | None, served: str | None = None) -> None:
        """Switch the server back to `model_id` if it serves something else."""
        if model_id is None:
            return
        if served is None:
            served = self.client.active_model()
        if served != model_id:
            self.client.set_active(model_id)
            log.info("inference server %s serves %s again", self.client.base, model_id)

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1

    def deploy_quietly(self, model_id: str, path: Path, step: int) -> None:
        """`deploy` for the daemon: a failure is logged and counted, never raised."""
        try:
            self.deploy(model_id, path, step)
        except EvaluationError as exc:
            self._count("remote")
            log.error("cannot deploy %s to %s: %s [reason=%s]", model_id, self.client.base,
                      exc, exc.reason)
        except DeployError as exc:  # the history's lock could not be made: nothing changed
            self._count("history_write")
            log.error("cannot deploy %s: %s [reason=history_write]", model_id, exc)
        except OSError as exc:
            self._count("history_write")
            log.error("deployed %s but cannot record it in %s: %s (a rollback will not know"
                      " it)", model_id, self.history_path, exc)

    def rollback(self) -> dict[str, Any]:
        """Re-activate what the last deployment replaced; returns the rollback record."""
        with self._deploy_lock, history_lock(self.history_path):
            history = self._history()
            top = history.deployed
            if top is None:
                raise DeployError(f"nothing to roll back: {self.history_path} records no"
                                  " deployment in force")
            previous = top.get("previous")
            if not previous:
                raise DeployError(f"{top['model_id']} replaced no model (the server served"
                                  " none); nothing to roll back to")
            self.client.set_active(str(previous))
            record = {"at": self.clock(), "action": "rollback", "model_id": previous,
                      "previous": top["model_id"]}
            _append(self.history_path, record)
            log.info("rolled back %s: %s serves %s again", top["model_id"], self.client.base,
                     previous)
            return record

    def samples(self) -> dict[str, Any]:
        """Figures for /metrics: deployments recorded, deployed step, failures."""
        history = self._history()
        with self._lock:
            failures = dict(self.failures)
        deployed = history.deployed
        return {
            "deployments": sum(r["action"] == "deploy" for r in history.records),
            "rollbacks": sum(r["action"] == "rollback" for r in history.records),
            "deployed_step": deployed.get("step") if deployed is not None else None,
            "failures": failures,
        }


def status(client: InferenceClient, path: Path) -> dict[str, Any]:
    """What the server serves next to what the history says is deployed (asks the server)."""
    history = read_history(path)
    return {"url": client.base, "served": client.active_model(), "deployed": history.deployed,
            "history": history.records}


def status_text(state: dict[str, Any], path: Path) -> str:
    """`status` for a person: served and deployed model, a note when they differ, the last
    ten history records."""
    served, deployed = state["served"], state["deployed"]
    lines = [f"server     {state['url']}", f"served     {served or '(no model)'}",
             f"deployed   {deployed['model_id'] if deployed else '(none recorded)'}"
             f" (history: {path})"]
    if deployed is not None and served != deployed["model_id"]:
        lines.append("note       the served model is not the deployed one (an evaluation"
                     " with remote.activate, or a change made by hand)")
    for record in state["history"][-10:]:
        lines.append(f"  {record.get('at', 0):.0f}  {record['action']:<8}"
                     f" {record.get('model_id')}  (replaced {record.get('previous')})")
    return "\n".join(lines) + "\n"
