"""The test inference server (tests/inference_server.py) against its API, over real HTTP.

Why: the remote-backend client's tests trust this server to behave like the old setup's;
if it answered with the wrong text, model or status, those tests would prove nothing. So its
answers are checked against LocalBackend run in this process on the same checkpoint, and
each fault flag is checked to produce the fault it promises.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inference_server import InferenceServer
from services import http_get

from evaluators.backends.local import LocalBackend
from evaluators.data import Message

QUESTION = [Message("user", "What is 12+34?")]


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    status, body = http_get(url, timeout=10)
    return status, json.loads(body)


def post_raw(url: str, data: bytes) -> tuple[int, dict[str, Any]]:
    """POST bytes as JSON; (status, decoded body), HTTP errors returned rather than raised."""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def post_json(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    return post_raw(url, json.dumps(body).encode())


def submit(server: InferenceServer, body: dict[str, Any]) -> str:
    status, answer = post_json(f"{server.url}/generate", body)
    assert status == 200, answer
    assert answer["status"] == "pending" and answer["job_id"].startswith("gen_")
    return str(answer["job_id"])


def wait_job(server: InferenceServer, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll /jobs/<id> until it is done or failed; the last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, answer = get_json(f"{server.url}/jobs/{job_id}")
        assert status == 200, answer
        if answer["status"] in ("done", "failed"):
            return answer
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished after {timeout}s")


@pytest.fixture(scope="module")
def local(tiny_run) -> Iterator[LocalBackend]:
    backend, _info = LocalBackend.load(tiny_run.checkpoints[-1], device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def prompt(local: LocalBackend) -> str:
    return local.render(QUESTION)


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceServer]:
    server = InferenceServer(tmp_path_factory.mktemp("infer"),
                             checkpoint=tiny_run.checkpoints[-1], model_id="last")
    server.start()
    yield server
    server.stop()


def test_health_and_active_model(served: InferenceServer, tiny_run) -> None:
    assert get_json(f"{served.url}/health") == (
        200, {"status": "ok", "active_model": "last", "queued": 0})
    assert get_json(f"{served.url}/models/active") == (
        200, {"id": "last", "is_active": True, "path": str(tiny_run.checkpoints[-1])})


def test_generation_matches_local_backend(
    served: InferenceServer, local: LocalBackend, prompt: str
) -> None:
    expected = local.generate_rendered([prompt], 12, [])[0]
    done = wait_job(served, submit(served, {"prompt": prompt, "max_tokens": 12,
                                            "temperature": 0}))
    assert done["status"] == "done", done
    result = done["result"]
    assert result["generated_text"] == expected.text
    assert result["model"] == "last"
    assert result["finish_reason"] == ("length" if expected.truncated else "stop")
    assert isinstance(result["inference_time_ms"], int)
    assert "tokens" not in result and "token_logprobs" not in result


def test_logprobs_only_when_asked(
    served: InferenceServer, local: LocalBackend, prompt: str
) -> None:
    expected = local.generate_rendered([prompt], 3, [])[0]
    result = wait_job(served, submit(served, {"prompt": prompt, "max_tokens": 3,
                                              "logprobs": True}))["result"]
    assert expected.tokens, "the comparison needs at least one generated token"
    assert result["finish_reason"] == ("length" if expected.truncated else "stop")
    assert result["tokens"] == expected.tokens
    assert result["token_logprobs"] == pytest.approx(expected.logprobs, abs=1e-4)


def test_switching_model_changes_who_answers(
    served: InferenceServer, tiny_run, prompt: str, tmp_path: Path
) -> None:
    first = str(tiny_run.checkpoints[0])
    assert post_json(f"{served.url}/models/register",
                     {"id": "first", "source": "test", "tags": "a,b", "path": first}) == (
        200, {"id": "first", "registered": True})
    try:
        assert post_json(f"{served.url}/models/set_active", {"id": "first"}) == (
            200, {"id": "first", "is_active": True})
        assert get_json(f"{served.url}/models/active")[1]["id"] == "first"
        result = wait_job(served, submit(served, {"prompt": prompt, "max_tokens": 4}))
        assert result["result"]["model"] == "first"
        models = {m["id"]: m for m in get_json(f"{served.url}/models")[1]["models"]}
        assert models["first"] == {"id": "first", "source": "test", "tags": "a,b",
                                   "path": first, "is_active": True}
        assert models["last"]["is_active"] is False
        post_json(f"{served.url}/models/register", {"id": "broken", "path": str(tmp_path)})
        status, answer = post_json(f"{served.url}/models/set_active", {"id": "broken"})
        assert status == 500 and answer["error"]
        assert get_json(f"{served.url}/models/active")[1]["id"] == "first"
    finally:
        post_json(f"{served.url}/models/set_active", {"id": "last"})


@pytest.mark.parametrize(
    ("path", "data", "status"),
    [
        ("/generate", b"{not json", 400),
        ("/generate", b"[1, 2]", 400),
        ("/generate", b'{"max_tokens": 4}', 400),
        ("/generate", b'{"prompt": 7}', 400),
        ("/generate", b'{"prompt": "x", "max_tokens": 0}', 400),
        ("/generate", b'{"prompt": "x", "max_tokens": "4"}', 400),
        ("/generate", b'{"prompt": "x", "max_tokens": true}', 400),
        ("/models/register", b'{"path": "/"}', 400),
        ("/models/register", b'{"id": "x", "path": "/no/such/dir"}', 400),
        ("/models/set_active", b'{"id": "nobody"}', 404),
        ("/nowhere", b"{}", 404),
    ],
)
def test_bad_requests(served: InferenceServer, path: str, data: bytes, status: int) -> None:
    answer_status, answer = post_raw(f"{served.url}{path}", data)
    assert answer_status == status and answer["error"]


def test_unknown_job_and_path(served: InferenceServer) -> None:
    for path in ("/jobs/gen_nope", "/nowhere"):
        status, answer = get_json(f"{served.url}{path}")
        assert status == 404 and answer["error"]


def test_no_active_model_then_failing_jobs(tmp_path: Path, tiny_run, prompt: str) -> None:
    """Without --checkpoint nothing is active; with --fail-jobs every job fails; an unhealthy
    /health answers 503 while the API keeps working."""
    server = InferenceServer(tmp_path, fail_jobs=True, health_status=503).start()
    try:
        assert get_json(f"{server.url}/health") == (503, {"status": "unavailable"})
        assert get_json(f"{server.url}/models/active") == (404, {"error": "no active model"})
        assert post_json(f"{server.url}/generate", {"prompt": prompt}) == (
            503, {"error": "no active model"})
        checkpoint = str(tiny_run.checkpoints[-1])
        post_json(f"{server.url}/models/register", {"id": "m", "path": checkpoint})
        assert post_json(f"{server.url}/models/set_active", {"id": "m"})[0] == 200
        failed = wait_job(server, submit(server, {"prompt": prompt, "max_tokens": 2}))
        assert failed["status"] == "failed" and failed["error"]
        assert "result" not in failed
    finally:
        server.stop()
    assert server.proc is not None and server.proc.returncode == 0


def test_job_delay_keeps_jobs_waiting(served: InferenceServer, prompt: str) -> None:
    with served.faults(job_delay=1.0) as server:
        ids = [submit(server, {"prompt": prompt, "max_tokens": 2}) for _ in range(2)]
        first = get_json(f"{server.url}/jobs/{ids[0]}")[1]
        assert first["status"] in ("pending", "running") and "result" not in first
        assert get_json(f"{server.url}/health")[1]["queued"] >= 1
        assert [wait_job(server, i)["status"] for i in ids] == ["done", "done"]
        assert server.stats()["jobs"] == 2


def test_faults_change_a_running_server_and_reset_restores_it(
    served: InferenceServer, prompt: str
) -> None:
    """POST /test/faults: the scenario of a running server; the block's end restores it and
    ends a delay in progress, so a shared server never carries one test's fault to the next."""
    with served.faults(fail_jobs=True, health_status=503) as server:
        assert get_json(f"{server.url}/health")[0] == 503
        assert wait_job(server, submit(server, {"prompt": prompt}))["status"] == "failed"
        assert post_json(f"{server.url}/test/faults", {"no_such_fault": 1})[0] == 400
    after = served.stats()
    assert (after["jobs"], after["requests"]) == (0, [])
    assert get_json(f"{served.url}/health")[0] == 200
    with served.faults(job_delay=600.0) as server:
        slow = submit(server, {"prompt": prompt, "max_tokens": 2})
    assert wait_job(served, slow)["status"] == "done"


def test_refusals_and_connections_are_what_stats_reports(tmp_path: Path) -> None:
    """--refuse 2: the first two API requests get 429 with Retry-After, /health never does;
    /stats numbers connections, so requests over one kept-alive connection share a number."""
    server = InferenceServer(tmp_path, refuse=2, retry_after=7).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        answers = []
        for path in ("/models", "/health", "/models", "/models"):
            conn.request("GET", path)
            resp = conn.getresponse()
            answers.append((path, resp.status, resp.getheader("Retry-After"),
                            json.loads(resp.read())))
        conn.close()
        assert get_json(f"{server.url}/models") == (200, {"models": []})
        stats = server.stats()
    finally:
        server.stop()
    assert [(p, s, r) for p, s, r, _ in answers] == [
        ("/models", 429, "7"), ("/health", 200, None), ("/models", 429, "7"),
        ("/models", 200, None)]
    assert answers[3][3] == {"models": []}
    logged = [(r["method"], r["path"], r["status"]) for r in stats["requests"]]
    assert logged[-5:] == [("GET", "/models", 429), ("GET", "/health", 200),
                           ("GET", "/models", 429), ("GET", "/models", 200),
                           ("GET", "/models", 200)]
    kept, fresh = stats["requests"][-5:-1], stats["requests"][-1]
    assert len({r["connection"] for r in kept}) == 1
    assert fresh["connection"] != kept[0]["connection"]
    # the connection of GET /stats itself came last
    assert stats["connections"] == fresh["connection"] + 1 and stats["jobs"] == 0
