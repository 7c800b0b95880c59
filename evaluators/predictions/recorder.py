"""Record predictions of each evaluated checkpoint without slowing or breaking evaluation.

Why a worker thread: a store that is down can take its connect timeout to say so, and the
evaluation must not wait for it. The daemon's thread only picks the rows (a few dozen
dicts) and queues them; the worker flushes the spool first (older rows first), writes the
new rows, and spools them when the store fails. Every exception stays in the worker and is
counted, never raised into the evaluation.

Counters (published by the evaluator): rows written, rows spooled, rows failed (neither
written nor spooled: the local disk refused them too), rows pending in the spool, and the
cost estimate of the recorded rows (cost.py).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evaluators.data import Example
from evaluators.evaluate import EvalResult
from evaluators.predictions import cost as cost_mod
from evaluators.predictions.export import write_jsonl
from evaluators.predictions.sample import build_rows, checkpoint_info, due, sample_keys
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Row, Store, StoreError, open_store
from tunewatch.core.config import PredictionsConfig

log = logging.getLogger("tunewatch.predictions")

SPOOL_DIR = "predictions_spool"
RETENTION_INTERVAL_SECONDS = 3600.0


def spool_dir(cfg: PredictionsConfig, state_dir: str | Path) -> Path:
    return Path(cfg.spool_dir) if cfg.spool_dir else Path(state_dir) / SPOOL_DIR


class Recorder:
    """Queues rows per checkpoint and writes them from its own thread (or inline)."""

    def __init__(self, cfg: PredictionsConfig, *, store: Store, spool: Spool, run: str,
                 clock: Callable[[], float] = time.time, background: bool = True,
                 retry_seconds: float = 10.0) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.run = run
        self.clock = clock
        self.retry_seconds = retry_seconds
        self.written = 0
        self.spooled = 0
        self.failed = 0
        self.pending = spool.count()
        self.cost: cost_mod.CostEstimate | None = None
        self.last_epoch: float | None = None
        self._last_retention = 0.0
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[Row] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._work, name="predictions", daemon=True)
            self._thread.start()

    @classmethod
    def from_config(cls, cfg: PredictionsConfig, *, state_dir: str | Path, run: str,
                    **kwargs: Any) -> Recorder:
        store = open_store(cfg.store_url, state_dir=state_dir,
                           connect_timeout=cfg.connect_timeout_seconds)
        return cls(cfg, store=store, spool=Spool(spool_dir(cfg, state_dir)), run=run, **kwargs)

    # ------------------------------------------------------------------ the daemon's side

    def record(self, *, step: int, checkpoint: Path, result: EvalResult,
               examples: Sequence[Example]) -> int:
        """Queue the rows of one evaluated checkpoint; how many. Never raises."""
        try:
            info = checkpoint_info(checkpoint)
            epoch = info.get("epoch")
            epoch = float(epoch) if isinstance(epoch, (int, float)) else None
            self._update_cost(result, info)
            if not due(self.cfg, step, epoch, self.last_epoch):
                return 0
            self.last_epoch = epoch
            # drawn from the evaluated examples (the whole suite, or the same --limit subset)
            sample = sample_keys([o.key for o in result.outcomes], self.cfg.sample_size,
                                 self.cfg.seed)
            rows = build_rows(self.cfg, run=self.run, step=step, epoch=epoch,
                              checkpoint=checkpoint.name, outcomes=result.outcomes,
                              examples=examples, sample=sample,
                              duration=result.run.duration_seconds, created_at=self.clock())
        except Exception:  # recording is best effort; the evaluation has succeeded already
            log.exception("cannot build the prediction rows of %s", checkpoint.name)
            return 0
        if self._thread is None:
            self._process(rows)
        else:
            self._queue.put(rows)
        return len(rows)

    def _update_cost(self, result: EvalResult, info: dict[str, Any]) -> None:
        overall = result.overall
        if result.run.examples_per_second <= 0 or not overall.examples:
            return
        epochs = info.get("num_train_epochs")
        self.cost = cost_mod.estimate(
            self.cfg, examples_per_second=result.run.examples_per_second,
            suite_examples=overall.examples, failed_ratio=1.0 - overall.exact_match.value,
            max_steps=info.get("max_steps"), save_steps=info.get("save_steps"),
            epochs=float(epochs) if isinstance(epochs, (int, float)) else None)

    def samples(self) -> dict[str, float | None]:
        """The figures the daemon publishes (metric name without prefix -> value)."""
        with self._lock:
            out: dict[str, float | None] = {
                "written": float(self.written), "spooled": float(self.spooled),
                "failed": float(self.failed), "pending": float(self.pending)}
        c = self.cost
        out["cost_checkpoint"] = c.checkpoint_seconds if c else None
        out["cost_run"] = c.run_seconds if c else None
        return out

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (spooling what the store refuses), then stop the worker."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("predictions still being written after %.0fs; the rest stays "
                            "queued and is lost unless spooled", timeout)
        self.store.close()

    # ------------------------------------------------------------------ the worker's side

    def _work(self) -> None:
        while True:
            try:
                rows = self._queue.get(timeout=self.retry_seconds if self.pending else None)
            except queue.Empty:
                self.flush()
                continue
            if rows is None:
                return
            self._process(rows)

    def flush(self) -> bool:
        """Write the spooled rows; whether the spool is empty afterwards. Never raises."""
        if not self.pending:
            return True
        try:
            new = self.spool.flush(self.store.write)
        except StoreError as exc:
            log.warning("predictions store still unavailable (%s); %d row(s) stay spooled",
                        exc, self.pending)
            return False
        except OSError as exc:
            log.error("cannot read the predictions spool %s: %s", self.spool.path, exc)
            return False
        with self._lock:
            self.written += new
            self.pending = 0
        return True

    def _process(self, rows: list[Row]) -> None:
        try:
            if self.flush():
                new = self.store.write(rows)
                with self._lock:
                    self.written += new
                self._retention()
                return
        except StoreError as exc:
            log.warning("cannot write %d prediction row(s), spooling them: %s", len(rows), exc)
        except Exception:  # a bug must not lose rows either: spool them
            log.exception("writing %d prediction row(s) failed; spooling them", len(rows))
        try:
            self.spool.append(rows)
        except OSError as exc:
            log.error("cannot spool %d prediction row(s) to %s: %s; they are lost",
                      len(rows), self.spool.path, exc)
            with self._lock:
                self.failed += len(rows)
            return
        with self._lock:
            self.spooled += len(rows)
            self.pending += len(rows)

    def _retention(self) -> None:
        now = self.clock()
        if now - self._last_retention < RETENTION_INTERVAL_SECONDS:
            return
        self._last_retention = now
        with contextlib.suppress(StoreError, OSError):
            apply_retention(self.store, self.cfg, now=now)


def apply_retention(store: Store, cfg: PredictionsConfig, *, now: float) -> int:
    """Delete rows older than retention_days, exporting them first when export_dir is set;
    how many were deleted. An export that fails deletes nothing."""
    cutoff = now - cfg.retention_days * 86400.0
    if cfg.export_dir:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        partial = Path(cfg.export_dir) / f".predictions-before-{stamp}.partial"
        exported = write_jsonl(store.older_than(cutoff), partial)
        if exported:
            path = partial.with_name(f"predictions-before-{stamp}.jsonl")
            n = 1
            while path.exists():  # never overwrite an earlier archive
                n += 1
                path = partial.with_name(f"predictions-before-{stamp}-{n}.jsonl")
            partial.rename(path)
            log.info("exported %d prediction row(s) older than %.0f days to %s",
                     exported, cfg.retention_days, path)
        else:
            partial.unlink(missing_ok=True)
    deleted = store.delete_older(cutoff)
    if deleted:
        log.info("deleted %d prediction row(s) older than %.0f days", deleted,
                 cfg.retention_days)
    return deleted
