"""HTTP client of the seeds' inference server (seed 000), with its failures counted.

Why its own module: the seeds' prediction daemon called this API with bare `requests` calls,
no timeout discipline and no check of which model answered, and it attributed the base
model's answers to the newest checkpoint for days. Here every call has a timeout, goes over
one kept-alive connection (a `requests.Session` per client: a job's polls do not open a
TCP connection each), a failed try is retried with doubling backoff (at least as long as
the server's `Retry-After`) and counted by reason, a job is polled with exponential backoff
until `job_timeout_seconds`, and each way of failing raises EvaluationError with a bounded
reason (evaluators/errors.py), never a made-up answer.

What is retried (`_status_failure`, `_transport_failure`): a refused connection, a 429
(rate_limited) and a 503 that says `Retry-After` for every call; a reset, a read timeout,
an answer that is not HTTP and any other 5xx only for calls that can be repeated without
effect. `POST /generate` is not one of those: the server may have queued the job before it
failed to answer, and sending it again would make the server run a second job.

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

import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, InvalidHeader, MaxRetryError
from urllib3.util.retry import Retry

from evaluators.errors import EvaluationError
from tunewatch.core.config import RemoteConfig

log = logging.getLogger(__name__)

# Bounded `reason` values of the client's counters (docs/metrics.md).
RETRY_REASONS = ("connection", "server_error", "rate_limited")
JOB_FAILURE_REASONS = ("timeout", "failed", "bad_response")

TOO_MANY_REQUESTS = 429
SERVICE_UNAVAILABLE = 503

# What one try may raise short of an HTTP answer: refused, reset, timed out, not HTTP at all
# (a bad status line) or a body cut short. Invalid URLs are not here: the configuration
# checks them, and retrying one would not help.
_TRANSPORT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)

# urllib3's Retry-After parser (delay-seconds or an HTTP date); the retry loop is ours.
_RETRY_AFTER_PARSER = Retry(total=0)


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
    def __init__(self, status: int, body: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Failure:
    """One failed try: its counter reason, whether it may be sent again, what went wrong."""

    reason: str
    retryable: bool
    detail: str
    retry_after: float | None = None


class InferenceClient:
    """One inference server; methods raise EvaluationError with a bounded reason.

    It holds one HTTP session (a pool of kept-alive connections): use it from one thread at
    a time, and close() it (or use it as a context manager) when done.
    """

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
        self.session = _session()

    def close(self) -> None:
        """Close the kept-alive connections (a later call opens a new one)."""
        self.session.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _once(self, method: str, path: str, body: dict[str, Any] | None,
              parse: bool = True) -> Any:
        """One HTTP exchange; the JSON answer (None when `parse` is off)."""
        resp = self.session.request(method, f"{self.base}{path}", json=body,
                                    timeout=self.cfg.request_timeout_seconds)
        raw = resp.content
        if resp.status_code >= 400:
            raise _HTTPStatusError(resp.status_code, raw.decode(errors="replace"),
                                   _retry_after(resp.headers.get("Retry-After")))
        if not parse:
            return None
        try:
            return json.loads(raw) if raw else {}
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both
            self.stats.job_failed("bad_response")
            raise EvaluationError(
                "remote_job", f"{self.base}{path} answered with invalid JSON: {exc}") from exc

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                parse: bool = True, *, replayable: bool = True) -> Any:
        """One API call, retried as `_status_failure` and `_transport_failure` allow.

        A 4xx other than 429 is the caller's to interpret (raised as _HTTPStatusError at
        once). `replayable`: sending the call twice has no effect beyond sending it once
        (false for POST /generate, which queues a job). Tries are request_retries in all,
        waiting retry_backoff_seconds, doubling, and at least the server's Retry-After; a
        Retry-After beyond job_timeout_seconds is not waited for (remote_unavailable: the
        daemon tries the checkpoint again later).

        The loop is ours rather than urllib3's Retry (the session's adapter does not
        retry): Retry keeps one total rather than a count per reason, sleeps with
        time.sleep rather than the client's `sleep`, does not wait before its first retry,
        and its method allow-list cannot say "POST /generate again after a 429, never after
        a read timeout". Its Retry-After parser is used.
        """
        wait = self.cfg.retry_backoff_seconds
        for attempt in range(1, self.cfg.request_retries + 1):
            try:
                return self._once(method, path, body, parse)
            except _HTTPStatusError as exc:
                failure = _status_failure(exc, replayable)
                if failure is None:
                    raise
            except _TRANSPORT_ERRORS as exc:
                failure = _transport_failure(exc, replayable)
            where = f"inference server {self.base}: {method} {path}"
            if not failure.retryable:
                raise EvaluationError(
                    "remote_unavailable",
                    f"{where} failed: {failure.detail}; not sent again, as the server may"
                    " have acted on it")
            if attempt == self.cfg.request_retries:
                raise EvaluationError(
                    "remote_unavailable",
                    f"{where} failed {attempt} time(s), last: {failure.detail}")
            delay = max(wait, failure.retry_after or 0.0)
            if delay > self.cfg.job_timeout_seconds:
                raise EvaluationError(
                    "remote_unavailable",
                    f"{where} failed: {failure.detail}; the server asks to retry after"
                    f" {delay:g}s, beyond remote.job_timeout_seconds"
                    f" ({self.cfg.job_timeout_seconds:g}s)")
            self.stats.retried(failure.reason)
            log.warning("%s failed (%s); retry %d of %d in %.2fs", where, failure.detail,
                        attempt, self.cfg.request_retries - 1, delay)
            self.sleep(delay)
            wait *= 2
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
              replayable: bool = True) -> Any:
        """`request`, with a 4xx turned into EvaluationError(remote_job) naming the call."""
        try:
            return self.request(method, path, body, replayable=replayable)
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
        answer = self._call("POST", "/generate", body, replayable=False)
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


def _session() -> requests.Session:
    """A session whose adapter never retries by itself (InferenceClient.request does)."""
    session = requests.Session()
    session.headers.update({"Accept": "application/json"})
    adapter = HTTPAdapter(max_retries=Retry(total=0, read=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or an HTTP date); None if absent
    or unreadable."""
    if value is None:
        return None
    try:
        return float(_RETRY_AFTER_PARSER.parse_retry_after(value))
    except InvalidHeader:
        log.debug("ignoring an unreadable Retry-After header %r", value)
        return None


def _status_failure(exc: _HTTPStatusError, replayable: bool) -> _Failure | None:
    """How to treat an error status; None for a 4xx the caller interprets.

    A 429 and a 503 with Retry-After are refusals: the server did not act on the request,
    so even a call that queues a job is sent again. Any other 5xx may come after the server
    acted (queued a job, then failed to answer), so only replayable calls are sent again.
    """
    if exc.status == TOO_MANY_REQUESTS:
        return _Failure("rate_limited", True, str(exc), exc.retry_after)
    if exc.status < 500:
        return None
    refused = exc.status == SERVICE_UNAVAILABLE and exc.retry_after is not None
    return _Failure("server_error", replayable or refused, str(exc), exc.retry_after)


def _transport_failure(exc: Exception, replayable: bool) -> _Failure:
    """A try without an HTTP answer: sent again when replayable or when never sent."""
    return _Failure("connection", replayable or _not_sent(exc), _describe(exc))


def _not_sent(exc: Exception) -> bool:
    """Whether the request failed before any of it reached the server: the connection was
    refused, not resolved or not established in time (urllib3 reports these as connect
    errors; a reset or a read timeout comes after sending)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, ConnectTimeoutError)


def _describe(exc: Exception) -> str:
    """The underlying cause, without urllib3's "Max retries exceeded" wrapping (this client
    lets urllib3 try once)."""
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, MaxRetryError) and cause.reason is not None:
        return str(cause.reason)
    return str(exc) or repr(exc)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
