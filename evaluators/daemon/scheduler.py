"""The evaluator daemon's loop: which checkpoint to evaluate when, and what a result changes.

Why one class: scanning, settling, retrying with backoff and publishing must agree on one
state (evaluators/state.py), kept on disk so a restart neither re-evaluates nor forgets.
Each turn scans the checkpoint directory (evaluators/discovery.py), evaluates the newest
complete checkpoint that needs it, and otherwise sleeps until the earliest of the periodic
rescan, a settling checkpoint's deadline, a failed one's retry time, or a file event.

A failed evaluation is logged with its cause, counted as
`tunewatch_eval_failures_total{reason}`, retried with exponential backoff up to
`evaluator.retry_attempts` tries (a server's fault is retried until it answers; a checkpoint
whose files change is tried afresh), and publishes nothing as a measurement. A success
updates the state, then the parts of the daemon: the published figures
(evaluators/daemon/figures.py), the hard-example files (hard_examples.py), the predictions
recorder (recording.py) and the deployment of the best checkpoint (deployment.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.metrics_core import Metric

from evaluators import families
from evaluators.compare import Comparison
from evaluators.daemon import figures, hard_examples, recording
from evaluators.daemon.deployment import BestDeployment
from evaluators.data import Suite, load_suite
from evaluators.discovery import Candidate, Scanner, Watcher
from evaluators.errors import REASONS, TRANSIENT_REASONS, EvaluationError
from evaluators.evaluate import EvalResult, Evaluate, evaluate_checkpoint
from evaluators.predictions.recorder import Recorder
from evaluators.remote.client import RemoteStats
from evaluators.remote.deploy import Deployer
from evaluators.state import State, load, save
from tunewatch.core.config import EvaluatorConfig

log = logging.getLogger("tunewatch.evaluate")

_MIN_SCAN_INTERVAL = 0.05  # seconds: a burst of file events costs one scan, not hundreds

# What started a scan (`tunewatch_eval_scans_total{reason}`), every one exposed from 0:
# the first scan, a file event that can change a checkpoint, the periodic rescan, a settling
# checkpoint's deadline, a failed one's retry time, and the scan right after an evaluation
# (another checkpoint may be waiting). An idle evaluator shows only `rescan`.
SCAN_REASONS = ("startup", "event", "rescan", "settle", "retry", "evaluated")


def _sig_hash(candidate: Candidate) -> str:
    return hashlib.sha256(repr(candidate.signature).encode()).hexdigest()[:16]


class Daemon:
    """The evaluation loop and its state; `collect()` serves the metrics (thread-safe)."""

    def __init__(
        self,
        cfg: EvaluatorConfig,
        *,
        checkpoints: Path,
        data: Path,
        state_dir: Path,
        run_name: str,
        limit: int | None = None,
        once: bool = False,
        evaluate: Evaluate = evaluate_checkpoint,
        clock: Callable[[], float] = time.time,
        recorder: Recorder | None = None,
        remote_stats: RemoteStats | None = None,
        deployer: Deployer | None = None,
    ) -> None:
        self.cfg = cfg
        self.recorder = recorder
        self.remote_stats = remote_stats
        self.deployment = (BestDeployment(deployer, cfg.remote, run_name)
                           if deployer is not None else None)
        self.checkpoints = Path(checkpoints)
        self.data = Path(data)
        self.state_dir = Path(state_dir)
        self.run_name = run_name
        self.limit = limit
        self.once = once
        self.evaluate = evaluate
        self.clock = clock
        self.state: State = load(self.state_dir)
        self.scanner = Scanner(self.checkpoints, cfg.settle_seconds)
        self.wake = threading.Event()
        self.watcher = Watcher(self.checkpoints, self.wake)
        self.suite: Suite | None = None
        # The published step's regressions already logged: (step, {(baseline, its step)}).
        self._logged_regressions: tuple[int | None, set[tuple[str, int]]] = (None, set())
        self._suite_error: str | None = None
        self._lock = threading.Lock()
        self.failures = dict.fromkeys(REASONS, 0)
        self.scans = dict.fromkeys(SCAN_REASONS, 0)
        self._planned = "startup"  # what starts the next scan unless an event comes first
        self.evaluations = 0
        self.examples_evaluated = 0  # the divisor of the eval host's energy per example
        self.backlog = 0
        self.newest_step: int | None = None
        self.published = families.from_jsonable(self.state.published)
        self.derived = figures.Derived()
        self._refresh_derived()

    @property
    def comparisons(self) -> list[Comparison]:
        """The published checkpoint's comparisons (previous, best) as last derived."""
        return self.derived.comparisons

    # ------------------------------------------------------------------ the loop

    def _needs(self, c: Candidate, now: float) -> bool:
        entry = self.state.checkpoints.get(c.step)
        if entry is None:
            return True
        if entry.get("status") == "ok":
            return False
        if entry.get("signature") != _sig_hash(c):
            log.info("%s changed since it failed; trying it afresh", c.path.name)
            del self.state.checkpoints[c.step]
            return True
        if entry.get("status") == "given_up" or self.once:
            return False
        return float(entry.get("next_attempt_at", 0.0)) <= now

    @property
    def suite_error(self) -> str | None:
        """Why the suite could not be loaded, the last time it was tried."""
        return self._suite_error

    def ready(self) -> bool:
        """`/-/ready`: the suite is loaded (the state was read in __init__)."""
        return self.suite is not None

    def load_suite_early(self) -> None:
        """Load the suite before the first checkpoint needs it, so readiness means it.

        A suite that cannot be loaded yet (the data directory is not there, or empty) is
        logged once per distinct error and tried again on the next loop turn. Meanwhile no
        checkpoint is evaluated, and none is charged an attempt for it (`step`).
        """
        if self.suite is not None:
            return
        try:
            self.suite = load_suite(self.data, self.cfg.files, self.cfg.derive_labels)
        except Exception as exc:  # any cause: not ready, the loop goes on
            message = f"{type(exc).__name__}: {exc}"
            if message != self._suite_error:
                log.warning("cannot load the suite from %s yet (%s); not ready until it "
                            "loads", self.data, message)
            self._suite_error = message
            return
        log.info("suite loaded: %d examples from %s", len(self.suite.examples), self.data)
        self._suite_error = None

    def step(self, reason: str | None = None) -> float | None:
        """Scan, evaluate the newest checkpoint that needs it; seconds to wait, 0 for again.

        None (only with `once`) means there is nothing left to do. `reason` is what started
        this scan (SCAN_REASONS); by default, what the previous step planned.
        """
        with self._lock:
            self.scans[reason or self._planned] += 1
        now = self.clock()
        candidates = self.scanner.scan()
        complete = [c for c in candidates if c.complete]
        pending = [c for c in complete if self._needs(c, now)]
        waiting = [
            c for c in complete
            if self.state.checkpoints.get(c.step, {}).get("status") == "failed"
            and not self.once
        ]
        with self._lock:
            self.newest_step = complete[0].step if complete else None
            self.backlog = len({c.step for c in pending + waiting})
        if pending and self._without_suite():
            self._planned = "rescan"
            return None if self.once else float(self.cfg.rescan_seconds)
        if pending:
            self._evaluate(pending[0])
            self._planned = "evaluated"
            return 0.0
        settling = any(not c.complete for c in candidates)
        if self.once:
            self._planned = "settle"
            return self.scanner.next_settle_deadline() if settling else None
        waits = [(self.cfg.rescan_seconds, "rescan")]
        if settling and (deadline := self.scanner.next_settle_deadline()) is not None:
            waits.append((deadline + 0.01, "settle"))
        for c in waiting:
            waits.append((float(self.state.checkpoints[c.step]["next_attempt_at"]) - now,
                          "retry"))
        wait, self._planned = min(waits)
        return max(_MIN_SCAN_INTERVAL, wait)

    def _without_suite(self) -> bool:
        """True when checkpoints wait for a suite that cannot be loaded (yet).

        Why not evaluate and fail: a data directory that appears after the daemon started
        (a slow copy, a mount) would otherwise cost every checkpoint its attempts, and they
        would stay given up once it is there. The wait is visible: /-/ready answers 503,
        the cause is logged, and `tunewatch_eval_failures_total{reason="data"}` grows by
        one per scan that found checkpoints waiting.
        """
        self.load_suite_early()
        if self.suite is not None:
            return False
        with self._lock:
            self.failures["data"] += 1
        return True

    def run_forever(self, stop: threading.Event) -> None:
        """Loop until `stop` is set (or, with `once`, until nothing is left).

        A scan follows an event only if one came since the previous scan began (`wake`
        is cleared just before it), so a scan never wakes the next one by itself.
        """
        first = True
        while not stop.is_set():
            self.watcher.ensure_started()
            self.load_suite_early()
            woken = self.wake.is_set() and not first
            self.wake.clear()
            first = False
            if woken:
                log.debug("scanning after a file event (%s)", self.watcher.last_event)
            try:
                wait = self.step("event" if woken else None)
            except Exception:  # the daemon stays up; the next scan tries again
                log.exception("evaluator loop failed; retrying in %ss", self.cfg.rescan_seconds)
                wait = self.cfg.rescan_seconds
                self._planned = "rescan"
            if wait is None:
                break
            if wait > 0:
                self.wake.wait(wait)
                stop.wait(_MIN_SCAN_INTERVAL)
        self.watcher.stop()

    # ------------------------------------------------------------------ one evaluation

    def _evaluate(self, c: Candidate) -> None:
        started = self.clock()
        delay = max(0.0, started - c.last_write)
        log.info("evaluating %s (step %d, %.2fs after its last write)", c.path.name, c.step, delay)
        wall = time.perf_counter()
        try:
            result = self.evaluate(c.path, self.cfg, suite=self.suite, limit=self.limit,
                                   show_progress=False)
        except EvaluationError as exc:
            self._failed(c, exc.reason, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: counted, not fatal
            log.exception("evaluation of %s raised", c.path)
            self._failed(c, "backend", f"{type(exc).__name__}: {exc}")
        else:
            self._succeeded(c, result, time.perf_counter() - wall, delay)
        if self.deployment is not None:
            self.deployment.follow(self.state)

    def _failed(self, c: Candidate, reason: str, message: str) -> None:
        entry = self.state.checkpoints.get(c.step, {})
        attempts = int(entry.get("attempts", 0)) + 1
        give_up = attempts >= self.cfg.retry_attempts and reason not in TRANSIENT_REASONS
        backoff = min(self.cfg.retry_backoff_seconds * 2 ** min(attempts - 1, 30),
                      self.cfg.retry_max_backoff_seconds)
        self.state.checkpoints[c.step] = {
            "checkpoint": c.path.name, "path": str(c.path), "status":
            "given_up" if give_up else "failed", "attempts": attempts, "reason": reason,
            "message": message, "signature": _sig_hash(c), "failed_at": self.clock(),
            "next_attempt_at": self.clock() + backoff,
        }
        with self._lock:
            self.failures[reason] += 1
        if give_up or self.once:
            log.error("cannot evaluate %s: %s [reason=%s]; giving up after %d attempt(s) "
                      "until its files change", c.path.name, message, reason, attempts)
        else:
            log.error("cannot evaluate %s: %s [reason=%s]; attempt %d%s, next in %.0fs",
                      c.path.name, message, reason, attempts,
                      " (the server's fault: retried until it answers)"
                      if reason in TRANSIENT_REASONS else f" of {self.cfg.retry_attempts}",
                      backoff)
        self._save()

    def _succeeded(self, c: Candidate, result: EvalResult, wall: float, delay: float) -> None:
        step = c.step
        overall = result.overall
        entry = self.state.checkpoints.get(step, {})
        self.state.checkpoints[step] = {
            "checkpoint": c.path.name, "path": str(c.path), "status": "ok",
            "attempts": int(entry.get("attempts", 0)) + 1, "signature": _sig_hash(c),
            "examples": overall.examples, "exact_match": overall.exact_match.value,
            "composite_score": overall.composite_score, "cross_entropy": overall.cross_entropy,
            "evaluated_at": self.clock(), "duration_seconds": wall,
        }
        self.state.outcomes[step] = {o.key: (o.exact_match, o.difficulty) for o in result.outcomes}
        samples = figures.measurement(result, self.cfg, step=step, duration=wall,
                                      discovery_delay=delay)
        current = figures.published_step(self.published)
        publish = current is None or step >= current
        if publish:
            self.state.published = families.to_jsonable(samples)
        self.state.prune(self.cfg.last_k)
        if self.suite is not None:
            hard_examples.write(self.state_dir, self.suite, result, step=step,
                                checkpoint=c.path.name, when=self.clock())
            if self.recorder is not None:
                recording.record(self.recorder, step=step, checkpoint=c.path, result=result,
                                 examples=self.suite.examples)
        self._save()
        with self._lock:
            self.evaluations += 1
            self.examples_evaluated += overall.examples
            if publish:
                self.published = samples
        self._refresh_derived()
        log.info("%s: exact match %.3f (%d/%d), cross-entropy %s, %.1fs", c.path.name,
                 overall.exact_match.value, overall.exact_match.successes, overall.examples,
                 overall.cross_entropy, wall)
        self._log_regressions()

    def _log_regressions(self) -> None:
        """Log each regression of the published (newest) checkpoint once, naming it.

        Why not after every evaluation: in a newest-first backlog each older checkpoint's
        evaluation re-derives the newest one's comparisons; repeating them read as if the
        older one regressed. A baseline that an older evaluation fills in (the newest
        one's previous checkpoint) can make a new regression: that one is logged then.
        """
        step = figures.published_step(self.published)
        if step is None:
            return
        name = self.state.checkpoints.get(step, {}).get("checkpoint", f"step {step}")
        if self._logged_regressions[0] != step:  # a new published checkpoint: nothing said
            self._logged_regressions = (step, set())
        logged = self._logged_regressions[1]
        for comp in self.comparisons:
            if comp.regression and (comp.baseline, comp.baseline_step) not in logged:
                logged.add((comp.baseline, comp.baseline_step))
                log.warning("%s regresses against the %s checkpoint (step %d): exact match "
                            "%+.3f, McNemar p=%.4g", name, comp.baseline, comp.baseline_step,
                            comp.overall.difference, comp.overall.p_value)

    def _save(self) -> None:
        try:
            save(self.state, self.state_dir)
        except OSError as exc:
            log.error("cannot write the evaluator state to %s: %s", self.state_dir, exc)
            with self._lock:
                self.failures["state_write"] += 1

    def _refresh_derived(self) -> None:
        """Comparisons of the published checkpoint, ranking, best step, freshness."""
        derived = figures.derived(self.state, self.cfg, figures.published_step(self.published))
        with self._lock:
            self.derived = derived

    # ------------------------------------------------------------------ /metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        live: families.Samples = {}
        with self._lock:
            succeeded = self.state.succeeded()
            figures.loop_samples(live, figures.LoopCounts(
                run=self.run_name, failures=self.failures, scans=self.scans,
                evaluations=self.evaluations, examples_evaluated=self.examples_evaluated,
                backlog=self.backlog,
                newest_step=self.newest_step,
                last_evaluated_step=succeeded[-1] if succeeded else None))
            figures.remote_samples(
                live, self.remote_stats.snapshot() if self.remote_stats else None)
            if self.deployment is not None:
                self.deployment.samples(live)
            if self.recorder is not None:
                recording.samples(live, self.recorder)
            samples = {**self.published, **self.derived.samples, **live}
        yield from families.families(samples)
