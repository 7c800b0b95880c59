"""A real HTTP inference server speaking the remote API of the team's old setup.

Why it exists: the remote-backend client (evaluators/remote/) must be tested against a real
server over real HTTP, with real queueing, real model switches and real failures, not a mock
that agrees with whatever the client assumes. The old setup's server is not available here,
so this one implements its API over the project's own `LocalBackend` on CPU:

- GET /health, GET /models, GET /models/active;
- POST /models/register, POST /models/set_active (loads the model; the previous one stays
  active when loading fails);
- POST /generate queues a job, GET /jobs/<job_id> polls it.

Jobs run on ONE worker thread in submission order, each with the model that is active when
it runs (a test can switch the model while jobs wait). Generation is always greedy: a
non-zero `temperature` is accepted (clients of the old API send one) but ignored, because
the evaluation compares greedy answers.

Fault scenarios come from flags: --job-delay (slow jobs), --fail-jobs (every job fails),
--health-status (an unhealthy /health), --refuse N (the first N API requests are refused
with --refuse-status, 429 by default, and `Retry-After: --retry-after`), --generate-delay
(POST /generate queues the job, then answers late: a client's read timeout after the job
exists). Run it as `python tests/inference_server.py --port N`; tests start it with
`InferenceServer` (below), as a child process stopped by its PID.

GET /stats is the test server's own (not the old API): the TCP connections it accepted,
the jobs it created and the requests it answered, each with its connection's number, so
that a test can see keep-alive and duplicate jobs from the server's side.

POST /test/faults (also the test server's own) changes the fault scenario of a running
server (a JSON object with any of the flags' names: job_delay, fail_jobs, health_status,
refuse, refuse_status, retry_after, generate_delay); POST /test/reset restores the start
scenario and empties the request log and the job count. Why: loading a model costs seconds,
so the tests share one server and give each scenario to it in turn
(`InferenceServer.faults`), rather than starting a server per scenario. A delay in progress
ends as soon as the scenario no longer asks for it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import queue
import signal
import sys
import threading
import time
import urllib.request
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:  # imported from elsewhere than tests/ (run as a script: it is)
    sys.path.insert(0, _TESTS_DIR)

from services import LOCALHOST, Service, free_port, http_get  # noqa: E402

log = logging.getLogger("inference_server")

DEFAULT_MAX_TOKENS = 256
REQUEST_LOG_SIZE = 10_000  # requests kept for GET /stats (a server started by hand runs long)
# Never refused by --refuse, nor logged for /stats: readiness probes, the statistics and the
# fault controls themselves.
NOT_REFUSED = {("GET", "/health"), ("GET", "/stats"), ("POST", "/test/faults"),
               ("POST", "/test/reset")}
NOT_LOGGED = {"/stats", "/test/faults", "/test/reset"}
DELAY_CHECK_SECONDS = 0.02  # how soon a delay in progress notices that its fault was lifted
_STOP_JOBS = None  # the worker's queue sentinel


class ApiError(Exception):
    """A request the API answers with an error status and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- state


@dataclass
class ModelEntry:
    """A registered model: registering only records it, set_active loads it."""

    id: str
    source: str
    tags: str
    path: str


@dataclass
class Job:
    """One /generate request and what became of it (read by /jobs/<id>)."""

    job_id: str
    prompt: str
    max_tokens: int
    stops: list[str]
    logprobs: bool
    status: str = "pending"
    result: dict[str, Any] | None = None
    error: str | None = None

    def view(self) -> dict[str, Any]:
        """The /jobs answer: result only when done, error only when failed."""
        body: dict[str, Any] = {"job_id": self.job_id, "status": self.status}
        if self.status == "done":
            body["result"] = self.result
        if self.status == "failed":
            body["error"] = self.error
        return body


@dataclass
class Options:
    """The fault-scenario flags."""

    job_delay: float = 0.0
    fail_jobs: bool = False
    health_status: int = 200
    refuse: int = 0
    refuse_status: int = HTTPStatus.TOO_MANY_REQUESTS
    retry_after: int = 1
    generate_delay: float = 0.0


@dataclass
class ServerState:
    """Models, the active backend and the jobs, shared by the HTTP threads and the worker.

    `lock` guards the dictionaries and the active id (held briefly, so /health never waits
    for a model). `model_lock` is held while a job generates and while the active backend is
    swapped, so that a backend is never closed under a running generation. `switch_lock`
    serialises set_active calls (loading happens outside the other two locks).
    """

    options: Options
    start_options: Options = field(default_factory=Options)
    models: dict[str, ModelEntry] = field(default_factory=dict)
    active_id: str | None = None
    backend: Any = None
    jobs: dict[str, Job] = field(default_factory=dict)
    pending: queue.Queue[Job | None] = field(default_factory=queue.Queue)
    counter: int = 0
    connections: int = 0
    requests: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=REQUEST_LOG_SIZE))
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    model_lock: threading.Lock = field(default_factory=threading.Lock)
    switch_lock: threading.Lock = field(default_factory=threading.Lock)

    def connected(self) -> int:
        """Count a new TCP connection; its number (from 1)."""
        with self.lock:
            self.connections += 1
            return self.connections

    def refusing(self, method: str, path: str) -> bool:
        """Whether this request is one of the first --refuse API requests."""
        if (method, path) in NOT_REFUSED:
            return False
        with self.lock:
            if self.refused >= self.options.refuse:
                return False
            self.refused += 1
            return True

    def arrived(self, connection: int, method: str, path: str) -> dict[str, Any]:
        """Log a request for GET /stats as it arrives (status None until answered), so that
        a request whose answer is late is seen at once."""
        entry: dict[str, Any] = {"connection": connection, "method": method, "path": path,
                                 "status": None, "received": time.monotonic()}
        with self.lock:
            self.requests.append(entry)
        return entry

    def answered(self, entry: dict[str, Any], status: int) -> None:
        with self.lock:
            entry["status"] = status

    def set_faults(self, changes: dict[str, Any]) -> Options:
        """Change the running scenario (POST /test/faults); a fresh --refuse budget."""
        known = {f.name for f in dataclasses.fields(Options)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"unknown fault(s) {unknown}")
        with self.lock:
            self.options = dataclasses.replace(self.options, **changes)
            self.refused = 0
            return self.options

    def reset(self) -> None:
        """The start scenario again, an empty request log and job count (POST /test/reset)."""
        with self.lock:
            self.options = self.start_options
            self.refused = 0
            self.counter = 0
            self.requests.clear()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"connections": self.connections, "jobs": self.counter,
                    "requests": [dict(r) for r in self.requests]}

    def queued(self) -> int:
        with self.lock:
            return sum(1 for j in self.jobs.values() if j.status == "pending")

    def register(self, entry: ModelEntry) -> None:
        with self.lock:
            self.models[entry.id] = entry

    def set_active(self, model_id: str) -> None:
        """Load the model, then swap it in and close the previous one (kept if loading fails)."""
        with self.switch_lock:
            with self.lock:
                entry = self.models.get(model_id)
            if entry is None:
                raise ApiError(HTTPStatus.NOT_FOUND, f"unknown model {model_id!r}")
            backend = load_backend(entry.path)
            with self.model_lock:
                old = self.backend
                with self.lock:
                    self.backend, self.active_id = backend, model_id
                if old is not None:
                    old.close()
        log.info("active model: %s (%s)", model_id, entry.path)

    def submit(self, job_fields: dict[str, Any]) -> Job:
        with self.lock:
            if self.active_id is None:
                raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "no active model")
            self.counter += 1
            job = Job(job_id=f"gen_{self.counter}_{uuid.uuid4().hex[:8]}", **job_fields)
            self.jobs[job.job_id] = job
        self.pending.put(job)
        return job


def load_backend(path: str) -> Any:
    """LocalBackend on CPU; any failure becomes a 500 (the caller keeps the previous model)."""
    from evaluators.backends.local import LocalBackend

    try:
        backend, _info = LocalBackend.load(path, device="cpu", dtype="auto",
                                           no_chat_template="error")
    except Exception as exc:  # the API reports every loading failure the same way
        log.warning("cannot load %s: %s", path, exc)
        raise ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot load {path}: {exc}") from exc
    return backend


# --------------------------------------------------------------------------- worker


def run_worker(state: ServerState) -> None:
    """Run queued jobs one at a time, in submission order, until the sentinel arrives."""
    while True:
        job = state.pending.get()
        if job is _STOP_JOBS:
            return
        run_job(state, job)


def run_job(state: ServerState, job: Job) -> None:
    """One job: running, the optional delay, then done or failed (never raises)."""
    with state.lock:
        job.status = "running"
    delay_while(lambda: state.options.job_delay)
    try:
        if state.options.fail_jobs:
            raise RuntimeError("job failed (server started with --fail-jobs)")
        result = generate(state, job)
    except Exception as exc:  # a failed job is reported through /jobs, not a crash
        log.warning("job %s failed: %s", job.job_id, exc)
        with state.lock:
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        return
    with state.lock:
        job.status, job.result = "done", result


def delay_while(seconds: Any) -> None:
    """Wait `seconds()` from now, re-reading it: a fault lifted meanwhile ends the wait."""
    start = time.monotonic()
    while (left := seconds() - (time.monotonic() - start)) > 0:
        time.sleep(min(left, DELAY_CHECK_SECONDS))


def generate(state: ServerState, job: Job) -> dict[str, Any]:
    """Greedy generation with the model active now; the /jobs result body."""
    with state.model_lock:
        with state.lock:
            backend, model_id = state.backend, state.active_id
        if backend is None:
            raise RuntimeError("no active model")
        started = time.perf_counter()
        gen = backend.generate_rendered([job.prompt], job.max_tokens, job.stops)[0]
        elapsed_ms = int((time.perf_counter() - started) * 1000)
    result: dict[str, Any] = {
        "generated_text": gen.text,
        "inference_time_ms": elapsed_ms,
        "model": model_id,
        "finish_reason": "length" if gen.truncated else "stop",
    }
    if job.logprobs:
        result["tokens"] = list(gen.tokens)
        result["token_logprobs"] = [float(x) for x in gen.logprobs]
    return result


# --------------------------------------------------------------------------- request checks


def require_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key!r} must be a non-empty string")
    return value


def optional_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{key!r} must be a string")
    return value


def generate_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a /generate body into Job fields (temperature and mode are accepted, unused)."""
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise ApiError(HTTPStatus.BAD_REQUEST, "'prompt' must be a string")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ApiError(HTTPStatus.BAD_REQUEST, "'max_tokens' must be a positive integer")
    stops = body.get("stop") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(HTTPStatus.BAD_REQUEST, "'stop' must be a list of strings")
    temperature = body.get("temperature", 0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ApiError(HTTPStatus.BAD_REQUEST, "'temperature' must be a number")
    if temperature:
        log.debug("temperature %s ignored: generation is greedy", temperature)
    return {"prompt": prompt, "max_tokens": max_tokens, "stops": stops,
            "logprobs": body.get("logprobs") is True}


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; anything else is a 400."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    return body


# --------------------------------------------------------------------------- routes


def get_health(state: ServerState) -> tuple[int, dict[str, Any]]:
    status = state.options.health_status
    if status != HTTPStatus.OK:
        return status, {"status": "unavailable"}
    with state.lock:
        active = state.active_id
    return HTTPStatus.OK, {"status": "ok", "active_model": active, "queued": state.queued()}


def get_models(state: ServerState) -> tuple[int, dict[str, Any]]:
    with state.lock:
        models = [{"id": m.id, "source": m.source, "tags": m.tags, "path": m.path,
                   "is_active": m.id == state.active_id} for m in state.models.values()]
    return HTTPStatus.OK, {"models": models}


def get_active(state: ServerState) -> tuple[int, dict[str, Any]]:
    with state.lock:
        active = state.active_id
        entry = state.models.get(active) if active is not None else None
    if entry is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "no active model")
    return HTTPStatus.OK, {"id": entry.id, "is_active": True, "path": entry.path}


def get_job(state: ServerState, job_id: str) -> tuple[int, dict[str, Any]]:
    with state.lock:
        job = state.jobs.get(job_id)
        if job is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"unknown job {job_id!r}")
        return HTTPStatus.OK, job.view()


def post_register(state: ServerState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    model_id = require_str(body, "id")
    path = optional_str(body, "path")
    if not path or not Path(path).is_dir():
        raise ApiError(HTTPStatus.BAD_REQUEST, f"path {path!r} is not a directory")
    state.register(ModelEntry(model_id, optional_str(body, "source"),
                              optional_str(body, "tags"), path))
    return HTTPStatus.OK, {"id": model_id, "registered": True}


def post_set_active(state: ServerState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    model_id = require_str(body, "id")
    state.set_active(model_id)
    return HTTPStatus.OK, {"id": model_id, "is_active": True}


def post_generate(state: ServerState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    job = state.submit(generate_fields(body))
    delay_while(lambda: state.options.generate_delay)  # the job exists; the answer is late
    return HTTPStatus.OK, {"job_id": job.job_id, "status": "pending"}


def route_get(state: ServerState, path: str) -> tuple[int, dict[str, Any]]:
    if path == "/health":
        return get_health(state)
    if path == "/models":
        return get_models(state)
    if path == "/models/active":
        return get_active(state)
    if path == "/stats":
        return HTTPStatus.OK, state.stats()
    if path.startswith("/jobs/") and path.count("/") == 2:
        return get_job(state, path[len("/jobs/"):])
    raise ApiError(HTTPStatus.NOT_FOUND, f"no such path: GET {path}")


def post_faults(state: ServerState, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return HTTPStatus.OK, dataclasses.asdict(state.set_faults(body))


def post_reset(state: ServerState, _body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    state.reset()
    return HTTPStatus.OK, dataclasses.asdict(state.options)


POST_ROUTES = {
    "/test/faults": post_faults,
    "/test/reset": post_reset,
    "/models/register": post_register,
    "/models/set_active": post_set_active,
    "/generate": post_generate,
}


class Handler(BaseHTTPRequestHandler):
    """JSON in, JSON out; every error is a JSON body `{"error": message}`.

    HTTP/1.1: a client may keep its connection for many requests; `connection` numbers it.
    """

    server: InferenceHTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes: with Nagle's algorithm the body would wait for the
    # client's delayed ACK (about 40 ms) on every answer over a kept-alive connection.
    # Production servers (uvicorn, ...) set TCP_NODELAY too.
    disable_nagle_algorithm = True
    connection_id = 0

    def setup(self) -> None:
        super().setup()
        self.connection_id = self.server.state.connected()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.respond(path, lambda: route_get(self.server.state, path))

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        raw = self.read_body()  # always: an unread body would corrupt the next request
        self.respond(path, lambda: self.dispatch_post(path, raw))

    def dispatch_post(self, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        body = parse_json(raw)
        handler = POST_ROUTES.get(path)
        if handler is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such path: POST {path}")
        return handler(self.server.state, body)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def respond(self, path: str, produce: Any) -> None:
        """Refuse (--refuse) or run a route, write its answer and log it for /stats;
        ApiError and crashes become JSON errors."""
        state = self.server.state
        entry = (state.arrived(self.connection_id, self.command, path)
                 if path not in NOT_LOGGED else None)
        headers: dict[str, str] = {}
        if state.refusing(self.command, path):
            status, body = state.options.refuse_status, {"error": "too many requests"}
            headers["Retry-After"] = str(state.options.retry_after)
        else:
            try:
                status, body = produce()
            except ApiError as exc:
                status, body = exc.status, {"error": exc.message}
            except Exception as exc:  # a bug must still answer JSON, and be logged
                log.exception("%s %s failed", self.command, self.path)
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)}
        if entry is not None:
            state.answered(entry, int(status))
        self.write_json(int(status), body, headers)

    def write_json(self, status: int, body: dict[str, Any],
                   headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class InferenceHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the shared state for its handlers."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: ServerState) -> None:
        super().__init__(address, Handler)
        self.state = state


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=LOCALHOST)
    parser.add_argument("--checkpoint", type=Path, help="register and activate this model")
    parser.add_argument("--model-id", help="the id of --checkpoint (default: its name)")
    parser.add_argument("--job-delay", type=float, default=0.0,
                        help="seconds every job stays running before it finishes")
    parser.add_argument("--fail-jobs", action="store_true", help="every job fails")
    parser.add_argument("--health-status", type=int, default=200,
                        help="HTTP status of /health (body 'unavailable' when not 200)")
    parser.add_argument("--refuse", type=int, default=0,
                        help="refuse the first N API requests (all but GET /health, /stats)")
    parser.add_argument("--refuse-status", type=int, default=HTTPStatus.TOO_MANY_REQUESTS,
                        help="HTTP status of a refused request (429; 503 for a busy server)")
    parser.add_argument("--retry-after", type=int, default=1,
                        help="seconds of the Retry-After header of a refused request")
    parser.add_argument("--generate-delay", type=float, default=0.0,
                        help="seconds POST /generate waits after queuing its job")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def initial_model(state: ServerState, checkpoint: Path, model_id: str | None) -> None:
    """--checkpoint: register and activate it before listening (so /health means ready)."""
    entry = ModelEntry(model_id or checkpoint.name, "checkpoint", "", str(checkpoint))
    state.register(entry)
    state.set_active(entry.id)


def install_signal_handlers(server: InferenceHTTPServer) -> None:
    """SIGTERM/SIGINT: shutdown() from another thread (it blocks until serve_forever ends)."""
    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def close_backend(state: ServerState) -> None:
    """Free the active model, unless a generation still holds it (the exit frees it then)."""
    if state.model_lock.acquire(timeout=5):
        try:
            if state.backend is not None:
                state.backend.close()
        finally:
            state.model_lock.release()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = Options(args.job_delay, args.fail_jobs, args.health_status, args.refuse,
                      args.refuse_status, args.retry_after, args.generate_delay)
    state = ServerState(options, start_options=options)
    if args.checkpoint is not None:
        try:
            initial_model(state, args.checkpoint, args.model_id)
        except ApiError as exc:
            log.error("%s", exc.message)
            return 1
    server = InferenceHTTPServer((args.host, args.port), state)
    worker = threading.Thread(target=run_worker, args=(state,), name="jobs", daemon=True)
    worker.start()
    install_signal_handlers(server)
    log.info("listening on %s:%d", args.host, args.port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        state.pending.put(_STOP_JOBS)
        worker.join(timeout=5)
        close_backend(state)
    log.info("stopped")
    return 0


# --------------------------------------------------------------------------- for tests


class InferenceServer(Service):
    """The server as a child process on a free port (stopped by PID)."""

    def __init__(
        self,
        workdir: Path,
        *,
        checkpoint: Path | None = None,
        model_id: str | None = None,
        job_delay: float = 0.0,
        fail_jobs: bool = False,
        health_status: int = 200,
        refuse: int = 0,
        refuse_status: int = HTTPStatus.TOO_MANY_REQUESTS,
        retry_after: int = 1,
        generate_delay: float = 0.0,
    ) -> None:
        super().__init__("inference_server", workdir)
        self.port = free_port()
        self.url = f"http://{LOCALHOST}:{self.port}"
        self.checkpoint = checkpoint
        self.model_id = model_id
        self.options = Options(job_delay, fail_jobs, health_status, refuse, refuse_status,
                               retry_after, generate_delay)

    def argv(self) -> list[str]:
        o = self.options
        args = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                "--job-delay", str(o.job_delay), "--health-status", str(o.health_status),
                "--refuse", str(o.refuse), "--refuse-status", str(int(o.refuse_status)),
                "--retry-after", str(o.retry_after), "--generate-delay",
                str(o.generate_delay)]
        if self.checkpoint is not None:
            args += ["--checkpoint", str(self.checkpoint)]
        if self.model_id is not None:
            args += ["--model-id", self.model_id]
        if o.fail_jobs:
            args.append("--fail-jobs")
        return args

    def start(self, timeout: float = 60.0) -> InferenceServer:
        """Spawn it and wait until GET /health answers at all (any status: it may be 503)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawn(self.argv())
        self.wait_ready(lambda: http_get(f"{self.url}/health", timeout=2.0)[0] > 0, timeout)
        return self

    @contextlib.contextmanager
    def faults(self, **changes: Any) -> Iterator[InferenceServer]:
        """The running server, its request log and job count emptied, with these faults
        (Options' names) until the block ends, then its start scenario again."""
        self.reset()
        self._post("/test/faults", changes)
        try:
            yield self
        finally:
            self.reset()

    def reset(self) -> None:
        """The start scenario, an empty request log and job count (POST /test/reset)."""
        self._post("/test/reset", {})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10.0) as answer:
            assert answer.status == HTTPStatus.OK

    def stats(self) -> dict[str, Any]:
        """GET /stats: {"connections", "jobs", "requests": [{"connection", "method", "path",
        "status" (None while unanswered), "received" (the server's time.monotonic())}, ...]}
        (/stats itself not logged)."""
        status, body = http_get(f"{self.url}/stats", timeout=10.0)
        assert status == HTTPStatus.OK, body
        answer: dict[str, Any] = json.loads(body)
        return answer


if __name__ == "__main__":
    sys.exit(main())
