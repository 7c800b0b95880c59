"""HTTP client of the seeds' inference server (seed 000), with its failures counted.

Why its own module: the seeds' prediction daemon called this API with bare `requests` calls,
no timeout discipline and no check of which model answered, and it attributed the base
model's answers to the newest checkpoint for days. Here every call has a timeout, a refused
connection or a 5xx is retried with doubling backoff and counted, a job is polled with
exponential backoff until `job_timeout_seconds`, and each way of failing raises
EvaluationError with a bounded reason (evaluators/errors.py), never a made-up answer.

The API (JSON both ways):
  GET  /health                          -> 200 when serving
  GET  /models/active                   -> {"id": ..., "is_active": true}
  POST /models/register {"id", "source", "tags", "path"}
  POST /models/set_active {"id"}
  POST /generate {"prompt", "max_tokens", "temperature", "stop", "logprobs"}
                                        -> {"job_id": ..., "status": "pending"}
  GET  /jobs/{id}                       -> {"status": pending|running|done|failed,
                                            "result": {"generated_text", ...}, "error"}
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evaluators.errors import EvaluationError
from tunewatch.config import RemoteConfig

log = logging.getLogger(__name__)

# Bounded `reason` values of the client's counters (docs/metrics.md).
RETRY_REASONS = ("connection", "server_error")
JOB_FAILURE_REASONS = ("timeout", "failed", "bad_response")


class RemoteStats:
    """Thread-safe counters the evaluator publishes (tunewatch_eval_remote_*)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs = 0
        self.job_seconds = 0.0
        self.retries = dict.fromkeys(RETRY_REASONS, 0)
        self.job_failures = dict.fromkeys(JOB_FAILURE_REASONS, 0)

    def job_done(self, seconds: float) -> None:
        """A job answered after `seconds` in flight."""
        with self._lock:
            self.jobs += 1
            self.job_seconds += seconds

    def retried(self, reason: str) -> None:
        """A request failed with `reason` (RETRY_REASONS) and is tried again."""
        with self._lock:
            self.retries[reason] += 1

    def job_failed(self, reason: str) -> None:
        """A job gave no answer, for `reason` (JOB_FAILURE_REASONS)."""
        with self._lock:
            self.job_failures[reason] += 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for one scrape."""
        with self._lock:
            return {"jobs": self.jobs, "job_seconds": self.job_seconds,
                    "retries": dict(self.retries), "job_failures": dict(self.job_failures)}


@dataclass(frozen=True)
class JobResult:
    """A finished generation job, as the server reported it.

    finish_reason, tokens, token_logprobs and the server's own inference time are optional
    in the API (None when absent).
    """

    text: str
    model: str | None
    finish_reason: str | None
    tokens: list[str] | None
    token_logprobs: list[float] | None
    inference_seconds: float | None


class _HTTPStatusError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class InferenceClient:
    """One inference server; methods raise EvaluationError with a bounded reason."""

    def __init__(
        self,
        cfg: RemoteConfig,
        stats: RemoteStats | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cfg.url:
            raise EvaluationError("config", "evaluator.remote.url is not set")
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.stats = stats or RemoteStats()
        self.sleep = sleep
        self.clock = clock

    # ------------------------------------------------------------------ transport

    def _once(self, method: str, path: str, body: dict[str, Any] | None,
              parse: bool = True) -> Any:
        """One HTTP exchange; the JSON answer (None when `parse` is off)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.base}{path}", data=data, method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.request_timeout_seconds) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _HTTPStatusError(exc.code, exc.read().decode(errors="replace")) from exc
        if not parse:
            return None
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
            self.stats.job_failed("bad_response")
            raise EvaluationError(
                "remote_job", f"{self.base}{path} answered with invalid JSON: {exc}") from exc

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                parse: bool = True) -> Any:
        """One API call; refused connections, timeouts and 5xx are retried, then raised.

        A 4xx is the caller's to interpret (raised as _HTTPStatusError at once). A POST
        /generate retried after a timeout may leave a duplicate job on the server; its
        result is never read, so it costs the server time but changes no figure.
        """
        wait = self.cfg.retry_backoff_seconds
        for attempt in range(1, self.cfg.request_retries + 1):
            try:
                return self._once(method, path, body, parse)
            except _HTTPStatusError as exc:
                if exc.status < 500:
                    raise
                reason, detail = "server_error", str(exc)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                # refused, reset, timed out, or not HTTP at all (a bad status line, a body
                # cut short): the server is not answering properly
                reason, detail = "connection", str(getattr(exc, "reason", exc)) or repr(exc)
            if attempt == self.cfg.request_retries:
                raise EvaluationError(
                    "remote_unavailable",
                    f"inference server {self.base}: {method} {path} failed {attempt} time(s),"
                    f" last: {detail}")
            self.stats.retried(reason)
            log.warning("inference server %s: %s %s failed (%s); retry %d of %d in %.2fs",
                        self.base, method, path, detail, attempt,
                        self.cfg.request_retries - 1, wait)
            self.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """`request`, with a 4xx turned into EvaluationError(remote_job) naming the call."""
        try:
            return self.request(method, path, body)
        except _HTTPStatusError as exc:
            raise EvaluationError(
                "remote_job", f"inference server {self.base}: {method} {path}: {exc}") from exc

    # ------------------------------------------------------------------ models

    def health(self) -> None:
        """Raise remote_unavailable unless /health answers 200."""
        try:
            self.request("GET", "/health", parse=False)  # any 200 body: seed 000's is text
        except _HTTPStatusError as exc:
            raise EvaluationError(
                "remote_unavailable", f"inference server {self.base} is unhealthy: {exc}"
            ) from exc

    def active_model(self) -> str | None:
        """The id /models/active names, None when the server serves nothing."""
        try:
            answer = self.request("GET", "/models/active")
        except _HTTPStatusError as exc:
            if exc.status == 404:
                return None
            raise EvaluationError(
                "remote_job", f"inference server {self.base}: GET /models/active: {exc}"
            ) from exc
        model = answer.get("id") if isinstance(answer, dict) else None
        if model is not None and not isinstance(model, str):
            raise EvaluationError("remote_job", f"/models/active gave a non-string id {model!r}")
        return model

    def register(self, model_id: str, path: str, tags: str) -> None:
        """Make the checkpoint at `path` known to the server as `model_id` (not served yet)."""
        self._call("POST", "/models/register", {
            "id": model_id, "source": self.cfg.source, "tags": tags, "path": path})

    def set_active(self, model_id: str) -> None:
        """Serve `model_id` from now on (the server loads it)."""
        self._call("POST", "/models/set_active", {"id": model_id})

    # ------------------------------------------------------------------ jobs

    def submit(self, prompt: str, max_tokens: int, stops: list[str]) -> str:
        """Queue one generation; returns its job id."""
        body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "mode": "normal", "stop": stops, "logprobs": self.cfg.logprobs}
        answer = self._call("POST", "/generate", body)
        job = answer.get("job_id") if isinstance(answer, dict) else None
        if not isinstance(job, str) or not job:
            self.stats.job_failed("bad_response")
            raise EvaluationError("remote_job", f"/generate answered without a job_id: {answer!r}")
        return job

    def run(self, prompts: list[str], max_tokens: int, stops: list[str],
            window: int) -> list[JobResult]:
        """Generate every prompt, at most `window` jobs queued at once; results in order.

        A sliding window keeps the server busy without flooding its queue: a new job is
        queued as soon as one is done. Polling backs off exponentially while nothing
        finishes (poll_initial_seconds doubling to poll_max_seconds) and starts again from
        the initial delay when something does.

        A job's job_timeout_seconds start when it becomes the oldest job in flight (on a
        server that works one job at a time, when its turn comes), so the queue ahead of it
        is not counted against it; the oldest job past its time fails the call
        (remote_timeout), checked in every round.
        """
        results: list[JobResult | None] = [None] * len(prompts)
        inflight: dict[str, tuple[int, float]] = {}
        queued = 0
        delay = self.cfg.poll_initial_seconds
        head: tuple[str, float] | None = None
        while queued < len(prompts) or inflight:
            while queued < len(prompts) and len(inflight) < window:
                inflight[self.submit(prompts[queued], max_tokens, stops)] = (
                    queued, self.clock())
                queued += 1
            progressed = self._collect(inflight, results)
            if not inflight:
                continue
            now = self.clock()
            oldest = next(iter(inflight))
            if head is None or head[0] != oldest:
                head = (oldest, now)
            if now - head[1] >= self.cfg.job_timeout_seconds:
                self._timed_out(oldest)
            if progressed:
                delay = self.cfg.poll_initial_seconds
                continue
            self.sleep(min(delay, head[1] + self.cfg.job_timeout_seconds - now))
            delay = min(delay * 2, self.cfg.poll_max_seconds)
        return [r for r in results if r is not None]

    def _collect(self, inflight: dict[str, tuple[int, float]],
                 results: list[JobResult | None]) -> bool:
        """Poll every job in flight once; True when at least one was done."""
        progressed = False
        for job, (index, submitted) in list(inflight.items()):
            answer = self._poll(job)
            if answer is not None:
                results[index] = answer
                del inflight[job]
                self.stats.job_done(self.clock() - submitted)
                progressed = True
        return progressed

    def _timed_out(self, job: str) -> None:
        self.stats.job_failed("timeout")
        raise EvaluationError(
            "remote_timeout",
            f"inference server {self.base}: job {job} not done after"
            f" {self.cfg.job_timeout_seconds:g}s")

    def _poll(self, job: str) -> JobResult | None:
        """One GET /jobs/{id}: the result when done, None while pending or running."""
        answer = self._call("GET", f"/jobs/{urllib.parse.quote(job, safe='')}")
        status = answer.get("status") if isinstance(answer, dict) else None
        if status in ("pending", "running", "queued"):
            return None
        if status == "failed":
            self.stats.job_failed("failed")
            raise EvaluationError(
                "remote_job", f"job {job} failed on {self.base}: {answer.get('error', '?')}")
        if status != "done":
            self.stats.job_failed("bad_response")
            raise EvaluationError("remote_job", f"job {job}: unknown status {status!r}")
        return self._result(job, answer.get("result"))

    def _result(self, job: str, result: Any) -> JobResult:
        text = result.get("generated_text") if isinstance(result, dict) else None
        if not isinstance(text, str):
            self.stats.job_failed("bad_response")
            raise EvaluationError("remote_job", f"job {job} is done without generated_text")
        tokens, logprobs = result.get("tokens"), result.get("token_logprobs")
        if not (isinstance(tokens, list) and isinstance(logprobs, list)
                and len(tokens) == len(logprobs)):
            tokens, logprobs = None, None
        elif not all(isinstance(t, str) for t in tokens) or not all(
                _is_number(v) for v in logprobs):
            self.stats.job_failed("bad_response")
            raise EvaluationError("remote_job", f"job {job}: tokens or token_logprobs are"
                                  " not strings and numbers")
        ms = result.get("inference_time_ms")
        model, finish = result.get("model"), result.get("finish_reason")
        return JobResult(
            text=text, model=model if isinstance(model, str) else None,
            finish_reason=finish if isinstance(finish, str) else None,
            tokens=tokens,
            token_logprobs=[float(v) for v in logprobs] if logprobs is not None else None,
            inference_seconds=float(ms) / 1000.0 if _is_number(ms) else None,
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
