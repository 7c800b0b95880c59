"""Deploying the best checkpoint to the inference server, and `tunewatch deploy rollback`.

Why: seed 000 switched the served model by hand and kept the previous id in someone's head.
These tests run the deployer and the command line against the real test server
(tests/inference_server.py): each deployment records what it replaced, a redeploy of the same
model records nothing, a model switched away by an evaluation is switched back, a rollback is
one command and walks the history back, a rolled-back model is not redeployed automatically,
and the evaluator daemon deploys its best checkpoint and publishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from inference_server import InferenceServer

from evaluators.backends.remote import model_id_for
from evaluators.daemon import Daemon
from evaluators.remote.client import InferenceClient, RemoteStats
from evaluators.remote.deploy import Deployer, history_lock, read_history
from tunewatch.core.config import Config

RUN = "demo"
BASE = "Qwen3-base"


def mid(path: Path) -> str:
    return model_id_for(Config().evaluator.remote, RUN, path, None)


@pytest.fixture(scope="module")
def shared_server(tiny_run, tmp_path_factory) -> Iterator[InferenceServer]:
    """One server for the module (starting one loads torch: seconds)."""
    srv = InferenceServer(tmp_path_factory.mktemp("server"), checkpoint=tiny_run.checkpoints[0],
                          model_id=BASE).start()
    yield srv
    srv.stop()


@pytest.fixture()
def server(shared_server) -> InferenceServer:
    """The server as the seeds had it: the base model (here: the first checkpoint) active.
    Models an earlier test registered stay registered, as on a real server."""
    client_for(shared_server.url).set_active(BASE)
    return shared_server


def client_for(url: str) -> InferenceClient:
    rc = dataclasses.replace(Config().evaluator.remote, url=url, retry_backoff_seconds=0.05)
    return InferenceClient(rc)


def deploy_cli(url: str, history: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "tunewatch", "deploy", *args, "--url", url,
         "--history", str(history)],
        capture_output=True, text=True, env=env, timeout=60, check=False)


def test_deploy_records_what_it_replaced_and_rollback_walks_back(
    server, tiny_run, tmp_path
) -> None:
    client = client_for(server.url)
    history = tmp_path / "deployments.jsonl"
    deployer = Deployer(client, history)
    c200, c300 = tiny_run.checkpoints[1], tiny_run.checkpoints[2]

    assert deployer.deploy(mid(c200), c200, 200) is True
    assert client.active_model() == mid(c200)
    assert deployer.deploy(mid(c200), c200, 200) is False  # already deployed: no record
    client.set_active(BASE)  # an evaluation (or a person) switched it away
    assert deployer.deploy(mid(c200), c200, 200) is False
    assert client.active_model() == mid(c200)  # switched back, still one record
    assert deployer.deploy(mid(c300), c300, 300) is True
    records = read_history(history).records
    assert [(r["model_id"], r["previous"]) for r in records] == [
        (mid(c200), BASE), (mid(c300), mid(c200))]
    assert deployer.samples()["deployed_step"] == 300

    status = deploy_cli(server.url, history, "status")
    assert status.returncode == 0, status.stderr
    assert f"served     {mid(c300)}" in status.stdout

    first = deploy_cli(server.url, history, "rollback")
    assert first.returncode == 0, first.stderr
    assert f"serves {mid(c200)} again" in first.stdout
    assert client.active_model() == mid(c200)
    second = deploy_cli(server.url, history, "rollback")
    assert second.returncode == 0, second.stderr
    assert client.active_model() == BASE
    third = deploy_cli(server.url, history, "rollback")
    assert third.returncode == 1 and "nothing to roll back" in third.stderr
    assert client.active_model() == BASE

    # A person rolled these back: the daemon does not push them again.
    assert deployer.deploy(mid(c300), c300, 300) is False
    assert client.active_model() == BASE
    samples = deployer.samples()
    assert (samples["deployments"], samples["rollbacks"], samples["deployed_step"]) == (
        2, 2, None)


def test_activation_between_start_and_first_deploy_is_not_the_previous_model(
    server, tiny_run, tmp_path
) -> None:
    """remote.activate switches the server before the first deployment: the model to
    return to is what was served at start, and a rolled-back model is not left served."""
    client = client_for(server.url)
    deployer = Deployer(client, tmp_path / "deployments.jsonl")
    deployer.note_served()
    c100, c200 = tiny_run.checkpoints[0], tiny_run.checkpoints[1]
    client.register(mid(c200), str(c200), "step200")  # what an evaluation's activate does
    client.set_active(mid(c200))
    assert deployer.deploy(mid(c200), c200, 200) is True
    assert read_history(tmp_path / "deployments.jsonl").records[0]["previous"] == BASE
    deployer.rollback()
    assert client.active_model() == BASE
    client.register(mid(c100), str(c100), "step100")  # the next evaluation switches it
    client.set_active(mid(c100))
    assert deployer.deploy(mid(c200), c200, 200) is False  # still best, but rolled back
    assert client.active_model() == BASE


def lines_until(stream: IO[str], needle: str, timeout: float) -> list[str]:
    """Lines read from `stream` (in a thread: a pipe read has no timeout) until one holds
    `needle`; what was read when the stream ended or `timeout` ran out otherwise."""
    found: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(line)
        found.put(None)

    threading.Thread(target=read, daemon=True).start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(needle in line for line in lines):
        with contextlib.suppress(queue.Empty):
            line = found.get(timeout=0.1)
            if line is None:
                break
            lines.append(line)
    return lines


def test_a_rollback_during_a_deployment_waits_and_undoes_that_deployment(
    server, tiny_run, tmp_path
) -> None:
    """Rule: a rollback from another process never interleaves with a deployment; started
    while one is in progress, it waits for it and rolls back what that deployment made."""
    client = client_for(server.url)
    history = tmp_path / "deployments.jsonl"
    c200, c300 = tiny_run.checkpoints[1], tiny_run.checkpoints[2]
    assert Deployer(client, history).deploy(mid(c200), c200, 200) is True
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}
    with history_lock(history):  # the daemon's deployment of checkpoint 300, in progress
        rollback = subprocess.Popen(
            [sys.executable, "-m", "tunewatch", "deploy", "rollback", "--url", server.url,
             "--history", str(history)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert rollback.stderr is not None
        said = lines_until(rollback.stderr, "waiting for another process", timeout=60)
        assert any("waiting for another process" in line for line in said), said
        assert rollback.poll() is None
        client.register(mid(c300), str(c300), "step300,tunewatch,best")  # as deploy() does
        client.set_active(mid(c300))
        with history.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"at": time.time(), "action": "deploy", "model_id": mid(c300),
                                 "step": 300, "checkpoint": c300.name, "path": str(c300),
                                 "previous": mid(c200)}) + "\n")
    out, err = rollback.communicate(timeout=60)
    assert rollback.returncode == 0, err
    assert f"serves {mid(c200)} again (rolled back {mid(c300)})" in out
    assert client.active_model() == mid(c200)
    assert [r["action"] for r in read_history(history).records] == [
        "deploy", "deploy", "rollback"]


def test_a_history_that_cannot_be_locked_changes_nothing(tmp_path) -> None:
    """The lock file cannot be made (its directory is a file): counted as history_write
    before the server is asked anything (this one is down: no remote failure)."""
    (tmp_path / "not-a-dir").write_text("")
    deployer = Deployer(client_for("http://127.0.0.1:9"), tmp_path / "not-a-dir" / "h.jsonl")
    checkpoint = tmp_path / "checkpoint-200"
    checkpoint.mkdir()
    deployer.deploy_quietly(mid(checkpoint), checkpoint, 200)
    assert deployer.failures == {"remote": 0, "checkpoint_missing": 0, "history_write": 1}


def test_a_missing_checkpoint_or_a_down_server_is_counted(server, tiny_run, tmp_path) -> None:
    deployer = Deployer(client_for(server.url), tmp_path / "h.jsonl")
    deployer.deploy_quietly("demo-checkpoint-999", tmp_path / "checkpoint-999", 999)
    assert deployer.failures["checkpoint_missing"] == 1
    down = Deployer(client_for("http://127.0.0.1:9"), tmp_path / "h.jsonl")
    c = tiny_run.checkpoints[1]
    down.deploy_quietly(mid(c), c, 200)
    assert down.failures["remote"] == 1
    assert read_history(tmp_path / "h.jsonl").records == []


def test_a_damaged_history_line_is_named_and_skipped(tmp_path, caplog) -> None:
    history = tmp_path / "deployments.jsonl"
    history.write_text('{"action": "deploy", "model_id": "a", "previous": null}\nnot json\n'
                       '{"action": "deploy", "step": 3}\n'
                       '{"action": "deploy", "model_id": "b", "step": "x"}\n')
    replayed = read_history(history)
    assert [r["model_id"] for r in replayed.records] == ["a"]
    assert f"{history}:2: not JSON" in caplog.text
    assert f"{history}:3: no model_id" in caplog.text
    assert f"{history}:4: step is not an integer" in caplog.text


def test_daemon_deploys_its_best_checkpoint(server, tiny_run, tmp_path) -> None:
    """Local evaluation, deploy_best on: the best checkpoint ends up served and published."""
    base = Config().evaluator
    rc = dataclasses.replace(base.remote, url=server.url, deploy_best=True)
    cfg = dataclasses.replace(base, remote=rc, device="cpu", batch_size=16)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for c in tiny_run.checkpoints[1:]:
        (checkpoints / c.name).symlink_to(c, target_is_directory=True)
    history = tmp_path / "state" / "deployments.jsonl"
    stats = RemoteStats()
    daemon = Daemon(cfg, checkpoints=checkpoints, data=tiny_run.data_dir,
                    state_dir=tmp_path / "state", run_name=RUN, limit=24,
                    remote_stats=stats, deployer=Deployer(InferenceClient(rc, stats), history))
    while daemon.step() == 0.0:
        pass
    best = daemon.state.best_step()
    assert best is not None
    best_path = checkpoints / f"checkpoint-{best}"
    assert client_for(server.url).active_model() == mid(best_path)
    deployed = read_history(history).deployed
    assert deployed is not None and deployed["step"] == best
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(daemon)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert f"tunewatch_eval_deployed_checkpoint_step {float(best)}" in text
    assert json.loads(history.read_text().splitlines()[0])["previous"] == BASE
