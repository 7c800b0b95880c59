"""The remote backend (evaluators/remote) against a real inference server over HTTP.

Why these tests: the seeds' prediction daemon scored the base model's answers as the newest
checkpoint's, and a server that was down or slow gave results nobody could trust. So: the
remote pass must equal the local one on the same checkpoint (answers and exact match), the
wrong model must be refused before and after the pass, slow jobs must be waited for with
exponential backoff, a job past its deadline, a failed job and a server that is down or
unhealthy must each end as one EvaluationError with its reason and a counted failure, and
the daemon must count it and retry. The server is tests/inference_server.py, a real process
serving the tiny model through LocalBackend.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from inference_server import InferenceServer
from services import free_port, promtool_check_metrics

from evaluators.backends.remote import RemoteEvaluator, model_id_for
from evaluators.daemon import Daemon
from evaluators.data import load_suite
from evaluators.errors import EvaluationError
from evaluators.evaluate import evaluate_checkpoint
from evaluators.families import families
from evaluators.predictions.recorder import Recorder
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Filters, open_store
from evaluators.remote.client import RETRY_REASONS, InferenceClient, RemoteStats
from tunewatch.core.config import (
    Config,
    ConfigError,
    EvaluatorConfig,
    PredictionsConfig,
    load_config,
)

RUN = "demo"
LIMIT = 24


def remote_cfg(url: str, **remote: object) -> EvaluatorConfig:
    """The evaluator section for a remote pass on CPU with quick polling and retries."""
    base = Config().evaluator
    rc = dataclasses.replace(base.remote, url=url, retry_backoff_seconds=0.05,
                             poll_initial_seconds=0.01, poll_max_seconds=0.2, **remote)
    return dataclasses.replace(base, backend="remote", remote=rc, device="cpu", batch_size=8)


def model_id(checkpoint: Path) -> str:
    return model_id_for(Config().evaluator.remote, RUN, checkpoint, None)


@pytest.fixture(scope="module")
def last(tiny_run) -> Path:
    return tiny_run.checkpoints[-1]


@pytest.fixture(scope="module")
def server(tiny_run, last, tmp_path_factory) -> Iterator[InferenceServer]:
    """A healthy server serving the last checkpoint under its tunewatch model id."""
    srv = InferenceServer(tmp_path_factory.mktemp("server"), checkpoint=last,
                          model_id=model_id(last)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def local_result(tiny_run, last):
    # One example per batch, as the test server generates each job: the same computation,
    # so the answers must be the same on any machine (a padded batch may tip a near-tie).
    cfg = dataclasses.replace(Config().evaluator, device="cpu", batch_size=1)
    return evaluate_checkpoint(last, cfg, data_dir=tiny_run.data_dir, limit=LIMIT)


def evaluate_remote(cfg: EvaluatorConfig, checkpoint: Path, data: Path,
                    stats: RemoteStats | None = None):
    return RemoteEvaluator(cfg, RUN, stats)(checkpoint, cfg, data_dir=data, limit=LIMIT)


def test_remote_pass_equals_the_local_one(server, tiny_run, last, local_result) -> None:
    stats = RemoteStats()
    result = evaluate_remote(remote_cfg(server.url), last, tiny_run.data_dir, stats)
    by_key = {o.key: o for o in local_result.outcomes}
    assert [o.key for o in result.outcomes] == [o.key for o in local_result.outcomes]
    for o in result.outcomes:
        assert (o.generated, o.exact_match, o.truncated) == (
            by_key[o.key].generated, by_key[o.key].exact_match, by_key[o.key].truncated)
        assert o.confidence == pytest.approx(by_key[o.key].confidence, abs=1e-4)
        assert o.nll is None and o.cross_entropy is None
    assert result.overall.exact_match.value == local_result.overall.exact_match.value
    # The server only generates: no cross-entropy, and no likelihood part in the composite.
    assert result.overall.cross_entropy is None
    assert "likelihood" not in result.overall.composite_parts
    assert result.overall.calibration is not None
    assert stats.snapshot()["jobs"] == LIMIT
    assert "inference server" in result.run.backend


def test_without_logprobs_confidence_is_absent(server, tiny_run, last, local_result) -> None:
    result = evaluate_remote(remote_cfg(server.url, logprobs=False), last, tiny_run.data_dir)
    assert all(o.confidence is None for o in result.outcomes)
    assert result.overall.calibration is None and result.overall.mean_confidence is None
    assert result.overall.exact_match.value == local_result.overall.exact_match.value


def test_wrong_model_is_refused_before_any_job(server, tiny_run) -> None:
    stats = RemoteStats()
    first = tiny_run.checkpoints[0]
    with pytest.raises(EvaluationError) as err:
        evaluate_remote(remote_cfg(server.url), first, tiny_run.data_dir, stats)
    assert err.value.reason == "wrong_model"
    assert model_id(first) in str(err.value) and model_id(tiny_run.checkpoints[-1]) in str(
        err.value)
    assert stats.snapshot()["jobs"] == 0


def test_activate_registers_and_switches_then_back(server, tiny_run, last) -> None:
    client = InferenceClient(remote_cfg(server.url).remote)
    first = tiny_run.checkpoints[0]
    try:
        result = evaluate_remote(remote_cfg(server.url, activate=True), first,
                                 tiny_run.data_dir)
        assert client.active_model() == model_id(first)
        assert result.step == 100 and result.overall.examples == LIMIT
    finally:
        client.set_active(model_id(last))
    assert client.active_model() == model_id(last)


def test_slow_jobs_are_polled_with_exponential_backoff(server, tiny_run, last) -> None:
    with server.faults(job_delay=0.4) as slow:
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            import time
            time.sleep(seconds)

        cfg = remote_cfg(slow.url, max_parallel_jobs=4)
        client = InferenceClient(cfg.remote, sleep=sleep)
        data = load_suite(tiny_run.data_dir, [])
        result = RemoteEvaluator(cfg, RUN, client=client)(last, cfg, suite=data, limit=4)
    assert result.overall.examples == 4
    # 4 jobs of 0.4 s each on one worker: about 1.6 s of polling, doubling from 0.01 s.
    assert waits[:4] == pytest.approx([0.01, 0.02, 0.04, 0.08])
    assert max(waits) <= 0.2 + 1e-9 and len(waits) < 30


def test_a_job_past_its_deadline_times_out(server, tiny_run, last) -> None:
    stats = RemoteStats()
    with server.faults(job_delay=5.0) as slow, pytest.raises(EvaluationError) as err:
        evaluate_remote(remote_cfg(slow.url, job_timeout_seconds=0.5,
                                   max_parallel_jobs=2), last, tiny_run.data_dir, stats)
    assert err.value.reason == "remote_timeout"
    assert "not done after 0.5s" in str(err.value)
    # The oldest job's time ran out (the second one's clock starts when its turn comes).
    assert stats.snapshot()["job_failures"]["timeout"] == 1


def test_failed_jobs_and_an_unhealthy_server(server, tiny_run, last) -> None:
    stats = RemoteStats()
    with server.faults(fail_jobs=True) as failing, pytest.raises(EvaluationError) as failed:
        evaluate_remote(remote_cfg(failing.url), last, tiny_run.data_dir, stats)
    with server.faults(health_status=503) as sick, pytest.raises(EvaluationError) as unhealthy:
        evaluate_remote(remote_cfg(sick.url), last, tiny_run.data_dir, stats)
    assert failed.value.reason == "remote_job" and "failed" in str(failed.value)
    assert stats.snapshot()["job_failures"]["failed"] == 1
    assert unhealthy.value.reason == "remote_unavailable"
    assert "503" in str(unhealthy.value)
    # A 503 is retried (request_retries tries in all) before it is given up.
    assert stats.snapshot()["retries"]["server_error"] == 2


def test_a_server_that_is_down_is_retried_then_reported(tiny_run, last) -> None:
    stats = RemoteStats()
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EvaluationError) as err:
        evaluate_remote(remote_cfg(url, request_retries=3), last, tiny_run.data_dir, stats)
    assert err.value.reason == "remote_unavailable"
    assert "failed 3 time(s)" in str(err.value) and url in str(err.value)
    assert stats.snapshot()["retries"]["connection"] == 2


def test_daemon_counts_the_failure_and_retries_when_the_server_is_back(
    tiny_run, last, tmp_path
) -> None:
    """Server down: counted as remote_unavailable, nothing published; up: evaluated."""
    port = free_port()
    # One attempt allowed: a checkpoint's own failure would be given up at once, but a
    # server that is down is the server's fault and is retried.
    cfg = dataclasses.replace(remote_cfg(f"http://127.0.0.1:{port}", request_retries=1),
                              retry_backoff_seconds=0.0, retry_attempts=1)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / last.name).symlink_to(last, target_is_directory=True)
    stats = RemoteStats()
    store = open_store("", state_dir=tmp_path / "state")
    recorder = Recorder(PredictionsConfig(sample_size=5), store=store,
                        spool=Spool(tmp_path / "spool"), run=RUN, background=False)
    daemon = Daemon(cfg, checkpoints=checkpoints, data=tiny_run.data_dir,
                    state_dir=tmp_path / "state", run_name=RUN, limit=LIMIT,
                    evaluate=RemoteEvaluator(cfg, RUN, stats), remote_stats=stats,
                    recorder=recorder)
    daemon.step()
    assert daemon.failures["remote_unavailable"] == 1
    assert daemon.state.checkpoints[300]["status"] == "failed"
    assert "tunewatch_eval_exact_match_ratio" not in daemon.published
    srv = InferenceServer(tmp_path / "srv", checkpoint=last, model_id=model_id(last))
    srv.port = port
    srv.url = f"http://127.0.0.1:{port}"
    srv.start()
    try:
        daemon.step()
    finally:
        srv.stop()
    assert daemon.state.checkpoints[300]["status"] == "ok"
    text = exposition(daemon)
    assert 'tunewatch_eval_failures_total{reason="remote_unavailable"} 1.0' in text
    assert f"tunewatch_eval_remote_jobs_total {float(LIMIT)}" in text
    assert 'tunewatch_eval_exact_match_ratio{difficulty="all"}' in text
    assert "tunewatch_eval_cross_entropy{" not in text
    assert promtool_check_metrics(text) == ""
    # The sample predictions are kept as with the local backend, cross-entropy as NULL.
    rows = store.query(Filters(run=RUN, step_min=300, step_max=300))
    recorder.close()
    assert len(rows) == 5
    assert all(r["cross_entropy"] is None and r["answer"] is not None for r in rows)


def exposition(daemon: Daemon) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(daemon)  # type: ignore[arg-type]
    assert list(families({}))  # every family is declared even without samples
    return generate_latest(registry).decode()


@pytest.mark.parametrize(("env", "key"), [
    ({"TUNEWATCH_EVALUATOR__BACKEND": "remote"}, "evaluator.remote.url"),
    ({"TUNEWATCH_EVALUATOR__REMOTE__URL": "gpu-host:8765"}, "evaluator.remote.url"),
    ({"TUNEWATCH_EVALUATOR__BACKEND": "remote", "TUNEWATCH_EVALUATOR__REMOTE__URL":
      "http://h:8765", "TUNEWATCH_EVALUATOR__REMOTE__DEPLOY_BEST": "true"},
     "evaluator.remote.deploy_best"),
    ({"TUNEWATCH_EVALUATOR__REMOTE__MODEL_ID": "{run}-{epoch}"}, "evaluator.remote.model_id"),
    ({"TUNEWATCH_EVALUATOR__REMOTE__MODEL_ID": "{run}"}, "evaluator.remote.model_id"),
    ({"TUNEWATCH_EVALUATOR__REMOTE__MODEL_ID": "m-{step:05d}"}, "evaluator.remote.model_id"),
    ({"TUNEWATCH_EVALUATOR__REMOTE__JOB_TIMEOUT_SECONDS": "0"},
     "evaluator.remote.job_timeout_seconds"),
])
def test_remote_settings_are_checked(tmp_path, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env)
    assert key in str(err.value)


class NotHTTP(socketserver.BaseRequestHandler):
    """Answers every connection with bytes that are not HTTP."""

    def handle(self) -> None:
        self.request.recv(4096)
        self.request.sendall(b"SURPRISE\r\n\r\n")


class PlainHealth(http.server.BaseHTTPRequestHandler):
    """A /health that answers 200 with plain text, as seed 000's server may."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def serving(server: socketserver.BaseServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def test_a_server_that_does_not_speak_http_is_retried_then_unavailable() -> None:
    server = socketserver.TCPServer(("127.0.0.1", 0), NotHTTP)
    serving(server)
    stats = RemoteStats()
    try:
        client = InferenceClient(
            remote_cfg(f"http://127.0.0.1:{server.server_address[1]}", request_retries=2).remote,
            stats)
        with pytest.raises(EvaluationError) as err:
            client.health()
    finally:
        server.shutdown()
        server.server_close()
    assert err.value.reason == "remote_unavailable"
    assert stats.snapshot()["retries"]["connection"] == 1


def test_a_plain_text_health_answer_is_healthy() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), PlainHealth)
    serving(server)
    try:
        InferenceClient(remote_cfg(f"http://127.0.0.1:{server.server_address[1]}").remote).health()
    finally:
        server.shutdown()
        server.server_close()


def test_backend_flags_are_checked_like_the_configuration(tiny_run, last) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "eval-once", str(last), "--data",
         str(tiny_run.data_dir), "--backend", "remote"],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2
    assert "evaluator.remote.url" in done.stderr


def test_compare_through_the_server_switches_it_and_equals_the_local_table(
    server, tiny_run, last
) -> None:
    """`tunewatch compare A B --backend remote` with activate gives the local table."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    env.update({"TUNEWATCH_RUN": RUN, "TUNEWATCH_EVALUATOR__DEVICE": "cpu"})
    first = tiny_run.checkpoints[0]
    args = [sys.executable, "-m", "tunewatch", "compare", str(first), str(last), "--data",
            str(tiny_run.data_dir), "--limit", "40", "--json"]

    def table(*extra: str, **more_env: str) -> dict[str, object]:
        done = subprocess.run([*args, *extra], capture_output=True, text=True,
                              env={**env, **more_env}, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    try:
        remote = table("--backend", "remote", "--remote-url", server.url,
                       TUNEWATCH_EVALUATOR__REMOTE__ACTIVATE="true")
        # Without activate the first checkpoint is not the served one: refused.
        refused = subprocess.run([*args, "--backend", "remote", "--remote-url", server.url],
                                 capture_output=True, text=True, env=env, timeout=300,
                                 check=False)
    finally:
        InferenceClient(remote_cfg(server.url).remote).set_active(model_id(last))
    # One example per batch, as the server generates each job: the same computation.
    local = table(TUNEWATCH_EVALUATOR__BATCH_SIZE="1")
    assert remote["overall"] == local["overall"]
    assert (remote["both_right"], remote["both_wrong"]) == (local["both_right"],
                                                            local["both_wrong"])
    assert refused.returncode == 1 and "reason=wrong_model" in refused.stderr


# --------------------------------------------------------------------------- HTTP behaviour
# Counted from the server's side (GET /stats of tests/inference_server.py): the connections
# the client used, the requests it sent and the jobs they created.

PROMPT = "What is 12+34?"


def requests_to(server: InferenceServer, method: str, path: str) -> list[dict[str, object]]:
    """The server's log of `method` requests whose path starts with `path`."""
    return [r for r in server.stats()["requests"]
            if r["method"] == method and str(r["path"]).startswith(path)]


class Sleeps:
    """The client's sleep: really sleeps, and remembers each wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        import time

        self.waits.append(seconds)
        time.sleep(seconds)


@pytest.mark.parametrize(("status", "reason"), [(429, "rate_limited"), (503, "server_error")])
def test_a_refusal_with_retry_after_is_waited_for_then_the_job_sent_again(
    server, last, status: int, reason: str
) -> None:
    """A 429 (or a busy 503) with Retry-After means no job was made: POST /generate is sent
    again, no sooner than the server asked, and the server runs exactly one job."""
    retry_after = 1
    stats, sleeps = RemoteStats(), Sleeps()
    with server.faults(refuse=1, refuse_status=status, retry_after=retry_after) as srv:
        with InferenceClient(remote_cfg(srv.url).remote, stats, sleep=sleeps) as client:
            results = client.run([PROMPT], 2, [], 1)
        posts = requests_to(srv, "POST", "/generate")
        jobs = srv.stats()["jobs"]
    assert len(results) == 1 and results[0].model == model_id(last)
    assert stats.snapshot()["retries"] == {r: int(r == reason) for r in RETRY_REASONS}
    # POST /generate is the first call: the first wait is its retry, longer than the
    # configured backoff because the server asked for more.
    assert remote_cfg(srv.url).remote.retry_backoff_seconds < retry_after <= sleeps.waits[0]
    assert [p["status"] for p in posts] == [status, 200]
    assert float(posts[1]["received"]) - float(posts[0]["received"]) >= retry_after
    assert jobs == 1


def test_a_job_is_submitted_and_polled_over_one_connection(server, last) -> None:
    """Keep-alive: the client's calls share one TCP connection; close() ends it."""
    with server.faults(job_delay=0.3) as srv:
        client = InferenceClient(remote_cfg(srv.url).remote)
        client.health()
        assert client.active_model() == model_id(last)
        assert len(client.run([PROMPT] * 3, 2, [], 2)) == 3
        mine = [r for r in srv.stats()["requests"] if r["path"] != "/health"]
        client.close()
        assert client.active_model() == model_id(last)  # a closed client opens a new one
        after = [r for r in srv.stats()["requests"] if r["path"] == "/models/active"]
    polls = [r for r in mine if str(r["path"]).startswith("/jobs/")]
    assert len(polls) > 3, "each job must have been polled more than once"
    assert sum(r["path"] == "/generate" for r in mine) == 3
    assert len({r["connection"] for r in mine}) == 1
    assert after[-1]["connection"] != mine[0]["connection"]


def test_a_post_that_timed_out_on_read_is_not_sent_again(server, last) -> None:
    """The server queued the job but answered too late: sending the POST again would make
    it run a second job, so the call fails instead (and the daemon retries the checkpoint)."""
    stats = RemoteStats()
    with server.faults(generate_delay=3.0) as srv:
        client = InferenceClient(
            remote_cfg(srv.url, request_timeout_seconds=0.5, request_retries=3).remote, stats)
        with pytest.raises(EvaluationError) as err, client:
            client.submit(PROMPT, 2, [])
        posts = requests_to(srv, "POST", "/generate")
        jobs = srv.stats()["jobs"]
    assert err.value.reason == "remote_unavailable" and "not sent again" in str(err.value)
    assert len(posts) == 1 and jobs == 1
    assert sum(stats.snapshot()["retries"].values()) == 0


def test_a_5xx_on_generate_is_not_sent_again_but_on_a_get_it_is(tmp_path) -> None:
    """Without an active model the server answers POST /generate 503 without Retry-After:
    it may have acted, so it is not sent again; a GET with a 5xx is."""
    srv = InferenceServer(tmp_path, health_status=500).start()
    stats = RemoteStats()
    try:
        with InferenceClient(remote_cfg(srv.url).remote, stats) as client:
            with pytest.raises(EvaluationError) as post:
                client.submit(PROMPT, 2, [])
            with pytest.raises(EvaluationError) as get:
                client.health()
        posts = requests_to(srv, "POST", "/generate")
    finally:
        srv.stop()
    assert post.value.reason == get.value.reason == "remote_unavailable"
    assert "HTTP 503" in str(post.value) and "not sent again" in str(post.value)
    assert len(posts) == 1
    cfg = remote_cfg(srv.url).remote
    assert stats.snapshot()["retries"]["server_error"] == cfg.request_retries - 1


@pytest.mark.parametrize(("retry_after", "tries"), [(0, 3), (5, 1)])
def test_rate_limiting_ends_as_unavailable(tmp_path, retry_after: int, tries: int) -> None:
    """A server that keeps refusing: tried request_retries times (each retry counted as
    rate_limited); one asking for a wait beyond job_timeout_seconds is not waited for."""
    srv = InferenceServer(tmp_path, refuse=10, retry_after=retry_after).start()
    stats, sleeps = RemoteStats(), Sleeps()
    cfg = remote_cfg(srv.url, request_retries=3, job_timeout_seconds=2.0).remote
    try:
        with pytest.raises(EvaluationError) as err, InferenceClient(
                cfg, stats, sleep=sleeps) as client:
            client.active_model()
        gets = requests_to(srv, "GET", "/models/active")
    finally:
        srv.stop()
    assert err.value.reason == "remote_unavailable" and "HTTP 429" in str(err.value)
    assert [g["status"] for g in gets] == [429] * tries
    assert stats.snapshot()["retries"]["rate_limited"] == tries - 1 == len(sleeps.waits)
    # The doubling backoff still applies when the server asks for no wait.
    assert sleeps.waits == [cfg.retry_backoff_seconds * 2 ** i for i in range(tries - 1)]
