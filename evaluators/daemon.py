"""`tunewatch evaluate`: evaluate every new checkpoint once and publish the figures (:9947).

Why a daemon: the seeds ran eight, each polling every 5 minutes and loading every checkpoint
to compute one figure. This one notices a complete checkpoint within a second (inotify plus a
periodic rescan, evaluators/discovery.py), evaluates it once with the evaluation core,
compares it on the same examples with the previous and the best checkpoint, keeps what it
needs on disk (evaluators/state.py) and serves the figures on its own /metrics.

A failed evaluation is logged with its cause, counted as
`tunewatch_eval_failures_total{reason}`, retried with exponential backoff up to
`evaluator.retry_attempts` tries (a checkpoint whose files change is tried afresh), and
publishes nothing as a measurement; the daemon stays up. docs/evaluator.md has the rest.

Idle means asleep: with nothing new, the loop scans once per `evaluator.rescan_seconds` and
reads no file contents (evaluators/discovery.py); `tunewatch_eval_scans_total{reason}` counts
what started each scan. `/-/ready` answers 200 once the suite is loaded (the state is read
before the server starts), so a health check knows the figures it serves can be computed.

    tunewatch evaluate --checkpoints runs/x/checkpoints --data data/validation
    tunewatch evaluate --once ...     # evaluate what is complete now, then exit
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from evaluators import metrics
from evaluators.compare import Comparison, compare, rank
from evaluators.data import Suite, load_suite
from evaluators.discovery import Candidate, Scanner, Watcher
from evaluators.errors import REASONS, TRANSIENT_REASONS, EvaluationError
from evaluators.evaluate import EvalResult, evaluate_checkpoint
from evaluators.predictions.recorder import Recorder
from evaluators.remote.backend import (
    RemoteEvaluator,
    add_backend_arguments,
    model_id_for,
    with_backend_arguments,
)
from evaluators.remote.client import InferenceClient, RemoteStats
from evaluators.remote.deploy import Deployer
from evaluators.remote.deploy_cmd import history_path
from evaluators.state import State, StateError, load, save
from exporters.server import (
    ServerStartError,
    add_web_arguments,
    start_for_section,
    wait_for_stop_signal,
)
from tunewatch.cli import UsageError
from tunewatch.config import Config, EvaluatorConfig

log = logging.getLogger("tunewatch.evaluate")

Evaluate = Callable[..., EvalResult]
_MIN_SCAN_INTERVAL = 0.05  # seconds: a burst of file events costs one scan, not hundreds


def _holds_checkpoint(path: Path, checkpoint: str) -> bool:
    """Whether the hard-examples file already has rows of this checkpoint.

    A line cut short by a kill mid-append is removed first (the file is cut back to its
    last newline), so the file stays valid JSONL, usable as training data as it is.
    """
    if not path.exists():
        return False
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    marker = json.dumps({"checkpoint": checkpoint})[1:-1].encode()
    return any(marker in line for line in data.splitlines())


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
        self.deployer = deployer
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
        self._suite_error: str | None = None
        self._lock = threading.Lock()
        self.failures = dict.fromkeys(REASONS, 0)
        self.scans = dict.fromkeys(metrics.SCAN_REASONS, 0)
        self._planned = "startup"  # what starts the next scan unless an event comes first
        self.evaluations = 0
        self.backlog = 0
        self.newest_step: int | None = None
        self.published = metrics.from_jsonable(self.state.published)
        self.derived: metrics.Samples = {}
        self.comparisons: list[Comparison] = []
        self._refresh_derived()

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

    def ready(self) -> bool:
        """`/-/ready`: the suite is loaded (the state was read in __init__)."""
        return self.suite is not None

    def load_suite_early(self) -> None:
        """Load the suite before the first checkpoint needs it, so readiness means it.

        A suite that cannot be loaded yet (the data directory is not there, or empty) is
        logged once per distinct error and tried again on the next loop turn; an
        evaluation meanwhile fails with its reason (`data`) as it always did.
        """
        if self.suite is not None:
            return
        try:
            self.suite = load_suite(self.data, self.cfg.files)
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
        this scan (metrics.SCAN_REASONS); by default, what the previous step planned.
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
            if self.suite is None:
                self.suite = load_suite(self.data, self.cfg.files)
            result = self.evaluate(c.path, self.cfg, suite=self.suite, limit=self.limit,
                                   show_progress=False)
        except EvaluationError as exc:
            self._failed(c, exc.reason, str(exc))
            self._deploy_best()
            return
        except Exception as exc:  # a bug or an unexpected library error: counted, not fatal
            log.exception("evaluation of %s raised", c.path)
            self._failed(c, "backend", f"{type(exc).__name__}: {exc}")
            self._deploy_best()
            return
        self._succeeded(c, result, time.perf_counter() - wall, delay)
        self._deploy_best()

    def _deploy_best(self) -> None:
        """With remote.deploy_best: the best checkpoint is (again) the served one."""
        best = self.state.best_step()
        if self.deployer is None or best is None:
            return
        path = Path(self.state.checkpoints[best]["path"])
        model_id = model_id_for(self.cfg.remote, self.run_name, path, best)
        self.deployer.deploy_quietly(model_id, path, best)

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
        samples = metrics.measurement(result, self.cfg, duration=wall, discovery_delay=delay)
        samples["tunewatch_eval_checkpoint_step"] = [({}, float(step))]
        current = self._published_step()
        publish = current is None or step >= current
        if publish:
            self.state.published = metrics.to_jsonable(samples)
        self.state.prune(self.cfg.last_k)
        self._write_hard_examples(c, result)
        self._record_predictions(c, result)
        self._save()
        with self._lock:
            self.evaluations += 1
            if publish:
                self.published = samples
        self._refresh_derived()
        log.info("%s: exact match %.3f (%d/%d), cross-entropy %s, %.1fs", c.path.name,
                 overall.exact_match.value, overall.exact_match.successes, overall.examples,
                 overall.cross_entropy, wall)
        for comp in self.comparisons:
            if comp.regression:
                log.warning("regression against the %s checkpoint (step %d): exact match "
                            "%+.3f, McNemar p=%.4g", comp.baseline, comp.baseline_step,
                            comp.overall.difference, comp.overall.p_value)

    def _record_predictions(self, c: Candidate, result: EvalResult) -> None:
        """Queue the sample predictions (docs/predictions.md); never fails the evaluation."""
        if self.recorder is None or self.suite is None:
            return
        try:
            self.recorder.record(step=c.step, checkpoint=c.path, result=result,
                                 examples=self.suite.examples)
        except Exception:  # recording is best effort; the evaluation has succeeded
            log.exception("recording the predictions of %s failed", c.path.name)

    def _save(self) -> None:
        try:
            save(self.state, self.state_dir)
        except OSError as exc:
            log.error("cannot write the evaluator state to %s: %s", self.state_dir, exc)
            with self._lock:
                self.failures["state_write"] += 1

    def _write_hard_examples(self, c: Candidate, result: EvalResult) -> None:
        """Wrong answers, in the seeds' messages format, appended to a dated JSONL file."""
        if self.suite is None:
            return
        by_key = {e.key: e for e in self.suite.examples}
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock()))
        path = self.state_dir / "hard_examples" / f"hard_examples_{day}.jsonl"
        lines = []
        for o in result.outcomes:
            example = by_key.get(o.key)
            if o.exact_match or example is None:
                continue
            messages = [{"role": m.role, "content": m.content} for m in example.prompt]
            messages.append({"role": "assistant", "content": example.golden})
            lines.append(json.dumps({
                "messages": messages, "id": o.id, "difficulty": o.difficulty,
                "pattern": o.pattern, "regime": o.regime, "source": o.source,
                "failure_mode": o.failure_mode, "step": c.step, "checkpoint": c.path.name,
                "generated": o.answer,
            }, ensure_ascii=False))
        if not lines:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if _holds_checkpoint(path, c.path.name):
                # Killed after appending but before saving the state: already written.
                log.info("hard examples of %s already in %s", c.path.name, path)
                return
            with path.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
        except OSError as exc:
            log.error("cannot append hard examples to %s: %s", path, exc)

    # ------------------------------------------------------------------ derived figures

    def _published_step(self) -> int | None:
        rows = self.published.get("tunewatch_eval_checkpoint_step", [])
        return int(rows[0][1]) if rows else None

    def _refresh_derived(self) -> None:
        """Comparisons of the published checkpoint, ranking, best step, freshness."""
        out: metrics.Samples = {}
        comparisons: list[Comparison] = []
        state = self.state
        step = self._published_step()
        if step is not None and step in state.outcomes:
            baselines = (("previous", state.previous_step(step)),
                         ("best", state.best_step(below=step)))
            for name, base in baselines:
                if base is None or base not in state.outcomes:
                    continue
                comp = compare(state.outcomes[step], state.outcomes[base], baseline=name,
                               baseline_step=base, rules=self.cfg.regression,
                               confidence_level=self.cfg.confidence_level)
                if comp is None:
                    continue
                comparisons.append(comp)
                self._comparison_samples(out, comp, step)
        ok = [(s, state.checkpoints[s]) for s in state.succeeded()]
        entries = [(s, e["checkpoint"], e.get("composite_score"), float(e["exact_match"]))
                   for s, e in ok]
        for r in rank(entries, self.cfg.last_k):
            labels = {"checkpoint": r.checkpoint, "step": str(r.step)}
            metrics._add(out, "tunewatch_eval_ranking_position", labels, r.rank)
            metrics._add(out, "tunewatch_eval_ranking_composite_score", labels,
                         r.composite_score)
            metrics._add(out, "tunewatch_eval_ranking_exact_match_ratio", labels, r.exact_match)
        best = state.best_step()
        metrics._add(out, "tunewatch_eval_best_checkpoint_step", {}, best)
        if ok:
            metrics._add(out, "tunewatch_eval_last_success_timestamp_seconds", {},
                         max(float(e["evaluated_at"]) for _s, e in ok))
        with self._lock:
            self.derived = out
            self.comparisons = comparisons

    def _comparison_samples(self, out: metrics.Samples, comp: Comparison, step: int) -> None:
        b = {"baseline": comp.baseline}
        p = comp.overall
        metrics._add(out, "tunewatch_eval_regression_p_value", b, p.p_value)
        metrics._add(out, "tunewatch_eval_regression", b, float(comp.regression))
        metrics._add(out, "tunewatch_eval_baseline_step", b, comp.baseline_step)
        metrics._add(out, "tunewatch_eval_paired_examples", b, p.examples)
        metrics._add(out, "tunewatch_eval_paired_fixed_examples", b, p.fixed)
        metrics._add(out, "tunewatch_eval_paired_broken_examples", b, p.broken)
        metrics._add(out, "tunewatch_eval_exact_match_difference_ratio", b, p.difference)
        metrics._add(out, "tunewatch_eval_exact_match_difference_low_ratio", b, p.difference_low)
        metrics._add(out, "tunewatch_eval_exact_match_difference_high_ratio", b,
                     p.difference_high)
        for difficulty, dp in comp.per_difficulty.items():
            metrics._add(out, "tunewatch_eval_difficulty_regression_p_value",
                         {**b, "difficulty": difficulty}, dp.p_value)
            metrics._add(out, "tunewatch_eval_difficulty_exact_match_difference_ratio",
                         {**b, "difficulty": difficulty}, dp.difference)
        now_ce = self.state.checkpoints[step].get("cross_entropy")
        base_ce = self.state.checkpoints[comp.baseline_step].get("cross_entropy")
        if now_ce is not None and base_ce:
            metrics._add(out, "tunewatch_eval_cross_entropy_change_ratio", b,
                         float(now_ce) / float(base_ce) - 1.0)

    # ------------------------------------------------------------------ /metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples: metrics.Samples = {**self.published, **self.derived}
            samples["tunewatch_eval_failures"] = [
                ({"reason": r}, float(n)) for r, n in self.failures.items()
            ]
            samples["tunewatch_eval_evaluations"] = [({}, float(self.evaluations))]
            samples["tunewatch_eval_scans"] = [
                ({"reason": r}, float(n)) for r, n in self.scans.items()
            ]
            samples["tunewatch_eval_backlog_checkpoints"] = [({}, float(self.backlog))]
            samples["tunewatch_eval_run"] = [({"run": self.run_name}, 1.0)]
            metrics.remote_samples(
                samples, self.remote_stats.snapshot() if self.remote_stats else None,
                self.deployer.samples() if self.deployer else None)
            if self.recorder is not None:
                for key, value in self.recorder.samples().items():
                    metrics._add(samples, metrics.PREDICTION_FAMILIES[key], {}, value)
            succeeded = self.state.succeeded()
            if self.newest_step is not None:
                samples["tunewatch_eval_newest_checkpoint_step"] = [
                    ({}, float(self.newest_step))]
                if succeeded:
                    samples["tunewatch_eval_lag_steps"] = [
                        ({}, float(max(0, self.newest_step - succeeded[-1])))]
        yield from metrics.families(samples)


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", default=None,
                        help="directory where checkpoint-<step>/ appear "
                             "(default: evaluator.checkpoints)")
    parser.add_argument("--data", default=None,
                        help="validation suite directory (default: evaluator.data)")
    parser.add_argument("--state-dir", dest="state_dir", default=None,
                        help="where the state and hard examples live (default: "
                             "evaluator.state_dir)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate a quick subset of N examples, spread over difficulties")
    parser.add_argument("--device", default=None, help="override evaluator.device")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override evaluator.batch_size")
    parser.add_argument("--once", action="store_true",
                        help="evaluate the complete checkpoints there now (one try each), "
                             "then exit: 0 if all succeeded, 1 otherwise")
    add_backend_arguments(parser)
    add_web_arguments(parser, "evaluator")


def _evaluator_config(args: argparse.Namespace, cfg: Config) -> EvaluatorConfig:
    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    chosen = {"checkpoints": args.checkpoints, "data": args.data, "state_dir": args.state_dir,
              "device": args.device, "batch_size": args.batch_size,
              "listen_address": args.listen_address, "web_config_file": args.web_config_file}
    ev = dataclasses.replace(
        cfg.evaluator, **{k: v for k, v in chosen.items() if v is not None})
    return with_backend_arguments(ev, args)


def _remote_parts(
    ev: EvaluatorConfig, run: str
) -> tuple[Evaluate, RemoteStats | None, Deployer | None]:
    """The evaluate function of evaluator.backend, the client's counters, the deployer."""
    stats = RemoteStats() if ev.backend == "remote" or ev.remote.deploy_best else None
    evaluate: Evaluate = (RemoteEvaluator(ev, run, stats) if ev.backend == "remote"
                          else evaluate_checkpoint)
    deployer = (Deployer(InferenceClient(ev.remote, stats), history_path(ev))
                if ev.remote.deploy_best else None)
    return evaluate, stats, deployer


def run(args: argparse.Namespace, cfg: Config) -> int:
    ev = _evaluator_config(args, cfg)
    evaluate, stats, deployer = _remote_parts(ev, cfg.run)
    recorder = (Recorder.from_config(cfg.predictions, state_dir=ev.state_dir, run=cfg.run)
                if cfg.predictions.enabled else None)
    try:
        daemon = Daemon(ev, checkpoints=Path(ev.checkpoints), data=Path(ev.data),
                        state_dir=Path(ev.state_dir), run_name=cfg.run, limit=args.limit,
                        once=args.once, recorder=recorder, evaluate=evaluate,
                        remote_stats=stats, deployer=deployer)
    except StateError as exc:
        log.error("%s (move it away to start afresh)", exc)
        if recorder is not None:
            recorder.close()
        return 1
    if not daemon.checkpoints.is_dir():
        log.warning("checkpoint directory %s does not exist (yet); waiting for it",
                    daemon.checkpoints)
    registry = CollectorRegistry()
    registry.register(daemon)  # type: ignore[arg-type]
    try:
        server = start_for_section(registry, ev, "tunewatch evaluator", ready=daemon.ready)
    except ServerStartError as exc:
        log.error("%s", exc)
        return 1
    if deployer is not None:
        deployer.note_served()
    stop = threading.Event()
    try:
        if args.once:
            daemon.run_forever(stop)
            failed = sum(daemon.failures.values())
            return 1 if failed else 0
        worker = threading.Thread(target=daemon.run_forever, args=(stop,), name="evaluator",
                                  daemon=True)
        worker.start()
        wait_for_stop_signal()
        stop.set()
        daemon.wake.set()
        return 0
    finally:
        server.stop()
        if recorder is not None:
            recorder.close()
