"""Every panel query of the committed dashboards returns data from a live test stack.

Why live: a dashboard query that names a metric nobody publishes, a label nobody attaches
or a recording rule that does not exist is valid PromQL and valid JSON; it just shows "No
data" on the day it is needed. Here the real processes run (host exporters fed recorded
NVML readings for a training and an eval host, node_exporter, the training sidecar on a
status file that a writer thread advances, the evaluator daemon on the tiny model's real
checkpoints, and a dcgm-exporter stand-in serving dcgm-style series), a private real
Prometheus scrapes them with the repository's recording rules and GPU alert rules (the
recorded XIDs fire GPUXidErrors, which the Run overview's alert panels show), and every
query is read from grafana/dashboards/*.json, its variables and Grafana macros expanded as
Grafana does, and run for every value of the run and role variables. A deliberately broken
panel must fail the same check. Each view of the seeds' control room and predictions page
that docs/dashboards.md maps to a panel is run once more by that mapping (the PostgreSQL
ones on the test PostgreSQL), so the documented panel is the one that has the data.

A private Prometheus (not the session one): variables resolve with label_values() over
everything Prometheus holds, so other tests' runs and hosts would become variable values
whose panels are legitimately empty here.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from services import NodeExporter, Prometheus, Tunewatch, wait_for
from test_predictions_dashboard import expand, reader, resolve  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

log = logging.getLogger("test_dashboards_live")
REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = REPO / "grafana" / "dashboards"
GPU_FIXTURE = REPO / "tests" / "fixtures" / "gpu" / "h100-load.json"
RUN = "dash-run"
HOSTS = {"training": "dash-train", "eval": "dash-eval"}
DCGM_HOST = "dash-dcgm"
SCRAPE_SECONDS = 1.0
STARTED = time.time()
RANGE_SECONDS = 300  # the time range the panels are queried over ("last 5 minutes")
MAX_DATA_POINTS = 1000  # Grafana's maxDataPoints is the panel's width in pixels
DOCS = REPO / "docs" / "dashboards.md"
# The Prometheus rules loaded: recording rules, and the GPU alerts the recorded XIDs fire.
RULE_FILES = ("training.rules.yml", "dcgm.rules.yml", "efficiency.rules.yml", "gpu.alerts.yml")
# The regime of the tiny suite, given an output contract so that the contract panels have
# something to show: answers starting with "1" (most sums of the hard additions) pass.
CONTRACTED_REGIME = "plain_sft"
BATCH_SIZE = 8  # the status file's batch_size
GPU_PANELS_FROM_DCGM = {  # Hardware panels the dcgm mapping rules feed (docs/dashboards.md)
    "GPU utilization ($role)", "GPU memory used and peak ($role)",
    "GPU temperature ($role)", "GPU power ($role)", "GPU clocks ($role)",
    "GPU throttling ($role)",
}

# --------------------------------------------------------------------------- Grafana's side


def load(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS / f"{name}.json").read_text())


def grafana_interval(range_s: float, min_interval_s: float) -> float:
    """$__interval: range / maxDataPoints rounded as Grafana rounds it, at least the
    datasource's minimum interval (its scrape interval, `timeInterval`)."""
    raw = range_s / MAX_DATA_POINTS
    nice = [0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200,
            1800, 3600, 7200, 10800, 21600, 43200, 86400]
    rounded = next((n for n in nice if n >= raw), nice[-1])
    return max(rounded, min_interval_s)


def duration(seconds: float) -> str:
    """A Prometheus duration string."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{int(seconds * 1000)}ms"


def macros(range_s: float, scrape_s: float) -> dict[str, str]:
    """Grafana's built-in variables for a Prometheus panel."""
    interval = grafana_interval(range_s, scrape_s)
    rate_interval = max(interval + scrape_s, 4 * scrape_s)
    return {
        "__rate_interval": duration(rate_interval),
        "__interval": duration(interval),
        "__interval_ms": str(int(interval * 1000)),
        "__range": duration(range_s),
        "__range_s": str(int(range_s)),
        "__range_ms": str(int(range_s * 1000)),
    }


def substitute(text: str, values: dict[str, str]) -> str:
    """Replace ${var}, $var and [[var]] (longest names first, as Grafana's regex does)."""
    def repl(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"undefined variable ${name}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, text)


def label_values(prom: Prometheus, query: str, start: float, end: float) -> list[str]:
    """Grafana's label_values(selector, label) and label_values(label)."""
    m = re.fullmatch(r"\s*label_values\((?:(.+),\s*)?(\w+)\)\s*", query)
    if not m:
        raise ValueError(f"unsupported variable query {query!r}")
    selector, label = m.group(1), m.group(2)
    params = {"start": str(start), "end": str(end)}
    if selector:
        series = prom.api("/api/v1/series", {**params, "match[]": selector})
        return sorted({s[label] for s in series if s.get(label)})
    return sorted(prom.api(f"/api/v1/label/{label}/values", params))


@dataclass
class Variable:
    name: str
    options: list[str]
    multi: bool
    all_value: str | None

    def all(self) -> str:
        """What Grafana sends for All: allValue, else a regex of every option."""
        if self.all_value is not None:
            return self.all_value
        return "(" + "|".join(re.escape(o) for o in self.options) + ")"


def resolve_variables(prom: Prometheus, dash: dict[str, Any], start: float, end: float,
                      ) -> dict[str, Variable]:
    """Every variable's options, in dashboard order (later queries see earlier values)."""
    resolved: dict[str, Variable] = {}
    current: dict[str, str] = {}
    for var in dash["templating"]["list"]:
        kind, name = var["type"], var["name"]
        if kind == "datasource":
            options = [var["current"]["value"]]
        elif kind == "custom":
            options = [o.strip() for o in var["query"].split(",") if o.strip()]
        elif kind == "query":
            options = label_values(prom, substitute(var["query"], current), start, end)
        else:
            raise ValueError(f"variable type {kind} not handled by this test")
        resolved[name] = Variable(name, options, bool(var.get("multi")),
                                  var.get("allValue") if var.get("includeAll") else None)
        if options:
            current[name] = resolved[name].all() if var.get("includeAll") else options[0]
    return resolved


def panel_scopes(panel: dict[str, Any], variables: dict[str, Variable],
                 pinned: dict[str, str]) -> Iterator[dict[str, str]]:
    """Variable values to query a panel with: each value of the variable it repeats over
    and of every single-valued query variable (run), All for the other multi variables."""
    iterate = [v for v in variables.values()
               if v.name != "datasource" and v.name not in pinned
               and (v.name == panel.get("repeat") or not v.multi)]
    fixed = {v.name: v.all() if v.multi else v.options[0]
             for v in variables.values() if v.name != "datasource" and v.options}
    fixed.update(pinned)
    fixed["datasource"] = variables["datasource"].options[0]
    for combo in itertools.product(*(v.options for v in iterate)):
        yield {**fixed, **{v.name: value for v, value in zip(iterate, combo, strict=True)}}


def check_dashboard(prom: Prometheus, dash: dict[str, Any], pinned: dict[str, str] | None = None,
                    titles: set[str] | None = None) -> list[str]:
    """Run every query of every panel; the problems found (empty when all return data)."""
    pinned = pinned or {}
    end = time.time()
    start = end - RANGE_SECONDS
    builtins = macros(RANGE_SECONDS, SCRAPE_SECONDS)
    step = grafana_interval(RANGE_SECONDS, SCRAPE_SECONDS)
    variables = resolve_variables(prom, dash, start, end)
    problems = [f"variable ${v.name} has no values" for v in variables.values()
                if not v.options and v.name not in pinned]
    if problems:
        return problems
    checked = 0
    for panel in dash["panels"]:
        if panel["type"] == "row" or (titles is not None and panel["title"] not in titles):
            continue
        checked += 1
        for scope in panel_scopes(panel, variables, pinned):
            for target in panel["targets"]:
                if target.get("hide"):
                    continue
                where = f"{panel['title']!r} {target['refId']} with {scope}"
                try:
                    expr = substitute(target["expr"], {**scope, **builtins})
                except KeyError as exc:
                    problems.append(f"{where}: {exc}")
                    continue
                try:
                    if target.get("instant"):
                        result = prom.api("/api/v1/query", {"query": expr, "time": str(end)})
                        ok = bool(result["result"])
                    else:
                        result = prom.api("/api/v1/query_range", {
                            "query": expr, "start": str(start), "end": str(end),
                            "step": str(step)})
                        ok = any(s["values"] for s in result["result"])
                except Exception as exc:  # a PromQL error is a broken panel, reported
                    problems.append(f"{where}: query failed: {exc}")
                    continue
                if not ok:
                    problems.append(f"{where}: no series for {expr}")
    if checked == 0:
        problems.append("no panel was checked")
    if titles is not None and checked != len(titles):
        problems.append(f"expected panels {sorted(titles)}, checked {checked}")
    return problems


def wait_for_panels(prom: Prometheus, dash: dict[str, Any], timeout: float,
                    **kwargs: Any) -> list[str]:
    """check_dashboard until it passes (data needs a few scrapes and rule evaluations)."""
    deadline = time.monotonic() + timeout
    while True:
        problems = check_dashboard(prom, dash, **kwargs)
        if not problems or time.monotonic() > deadline:
            return problems
        log.info("%s: %d queries without data yet, e.g. %s", dash["uid"], len(problems),
                 problems[0])
        time.sleep(2)


# --------------------------------------------------------------------------- the stack


def readings_fixture(path: Path, uuid: str, xid: int) -> Path:
    """The recorded H100 readings with this host's GPU uuid, one XID event, and the
    recording's run process (gpu_burn) working for RUN (the efficiency rules find a run's
    GPUs through it)."""
    data = json.loads(GPU_FIXTURE.read_text())
    for snapshot in data["snapshots"]:
        for gpu in snapshot["gpus"]:
            gpu["uuid"] = uuid
            for process in gpu.get("processes") or []:
                if process["run"]:
                    process["run"] = RUN
    data["xid_batches"] = [[{"gpu": 0, "uuid": uuid, "xid": xid}]]
    path.write_text(json.dumps(data))
    return path


def dcgm_exposition() -> str:
    """dcgm-exporter's default fields (and opt-in limits/violations) for one H100, in its
    format and units, with the blank sentinel where the board has no memory temperature."""
    labels = ('gpu="0",UUID="GPU-604ac76c-d9cf-fef3-62e9-d92044ab6e52",'
              'pci_bus_id="00000000:8D:00.0",device="nvidia0",'
              'modelName="NVIDIA H100 80GB HBM3",Hostname="dcgm-host",'
              'DCGM_FI_DRIVER_VERSION="570.86.15"')
    now = time.time()
    values = {
        "DCGM_FI_DEV_SM_CLOCK": 1980, "DCGM_FI_DEV_MEM_CLOCK": 2619,
        "DCGM_FI_DEV_MEMORY_TEMP": 9223372036854775794, "DCGM_FI_DEV_GPU_TEMP": 61,
        "DCGM_FI_DEV_POWER_USAGE": 612.5, "DCGM_FI_DEV_GPU_UTIL": 97,
        "DCGM_FI_DEV_MEM_COPY_UTIL": 25, "DCGM_FI_DEV_FB_FREE": 60000,
        "DCGM_FI_DEV_FB_USED": 20000, "DCGM_FI_DEV_FB_RESERVED": 1559,
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": int(3e9 + (now - STARTED) * 612500),
        "DCGM_FI_DEV_SLOWDOWN_TEMP": 87, "DCGM_FI_DEV_POWER_MGMT_LIMIT": 700,
        # 56 hours of power capping before the test (past 2^47 ns), then a tenth of the time.
        "DCGM_FI_DEV_POWER_VIOLATION": int(2e14 + (now - STARTED) * 1e8),
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0, "DCGM_FI_DEV_XID_ERRORS": 0,
    }
    lines = []
    for name, value in values.items():
        kind = "counter" if name.endswith(("CONSUMPTION", "VIOLATION")) else "gauge"
        lines += [f"# HELP {name} {name}.", f"# TYPE {name} {kind}", f"{name}{{{labels}}} {value}"]
    return "\n".join(lines) + "\n"


class DcgmStandIn:
    """Serves dcgm_exposition() on /metrics, as dcgm-exporter would (its release binary
    needs a GPU and DCGM; the mapping is about names, units and labels)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = dcgm_exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Batches of the status file's current file: more than a test session's steps reach.
BATCHES_IN_FILE = 1_000_000


class StatusWriter:
    """Advances the trainer's status file twice a second, as the seeds' daemon would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.step = 0
        self.write()
        self.thread.start()

    def write(self) -> None:
        step = self.step
        loss = 2.0 * math.exp(-step / 400) + 0.05 * math.sin(step)
        status = {
            "state": "training", "step": step, "max_steps": 10000, "epoch": step / 1000,
            "loss": loss, "eval_loss": loss + 0.1, "learning_rate": 2e-4, "grad_norm": 1.5,
            "tokens_seen": step * 2048, "samples_seen": step * 8, "run": RUN,
            "model": "tiny-qwen3", "dataset": "dash-data", "current_file": "batch_07.jsonl",
            # One long file whose batch only climbs: the ETA's rate (deriv over 5m) of a
            # batch that wrapped every few seconds could come out negative, so absent.
            "batch": step, "batches_total": BATCHES_IN_FILE, "updated_at": time.time(),
            "model_parameters": 494032768, "model_trainable_parameters": 8798208,
            "batch_size": BATCH_SIZE,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        tmp.rename(self.path)

    def _run(self) -> None:
        while not self.stop_event.wait(0.5):
            self.step += 3
            self.write()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)


def chatml_file(path: Path, lines: int) -> None:
    row = {"messages": [{"role": "user", "content": "1+1?"},
                        {"role": "assistant", "content": "2"}]}
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(lines)))


@dataclass
class Stack:
    prom: Prometheus
    processes: list[Any]
    evaluator: Tunewatch | None = None


def host_exporter(root: Path, role: str, marker: str, xid: int) -> Tunewatch:
    """`tunewatch exporter` for one host: recorded GPU readings, a watched process,
    checkpoints and queues."""
    host_dir = root / role
    ckpt = host_dir / "checkpoints" / "checkpoint-100"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"\0" * 4096)
    queue = host_dir / "queue"
    queue.mkdir()
    chatml_file(queue / "batch_01.jsonl", 3)
    config = host_dir / "tunewatch.yml"
    config.write_text(yaml.safe_dump({"exporter": {
        "collector_timeout_seconds": 3.0,
        "processes": [{"name": "trainer" if role == "training" else "evaluator",
                       "cmdline_pattern": marker}],
        "checkpoint_dirs": [str(host_dir / "checkpoints")],
        "queue_dirs": [{"path": str(queue), "priority": "high"}],
    }}))
    readings = readings_fixture(host_dir / "readings.json",
                                f"GPU-{role}-0000-0000-0000-000000000000", xid)
    return Tunewatch(f"exporter-{role}", host_dir).start(
        ["exporter", "--config", str(config)],
        env={"TUNEWATCH_EXPORTER__GPU_READINGS_FILE": str(readings)})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory,
          node_exporter: NodeExporter) -> Iterator[Stack]:
    """Prometheus with the repository's rules, scraping a training and an eval host."""
    root = tmp_path_factory.mktemp("dashboards")
    prom = Prometheus(root / "prometheus", scrape_interval=f"{int(SCRAPE_SECONDS)}s")
    prom.rule_files = [str(REPO / "prometheus" / "rules" / name) for name in RULE_FILES]
    prom.start()
    started: list[Any] = [prom]
    stack = Stack(prom, started)
    try:
        for role, host in HOSTS.items():
            marker = f"tunewatch-dashboard-{role}-workload"
            proc = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(900)", marker],
                env={**os.environ, "TUNEWATCH_RUN": RUN, "RANK": "0", "LOCAL_RANK": "0"})
            started.append(proc)
            exporter = host_exporter(root, role, marker, xid=13 if role == "training" else 31)
            started.append(exporter)
            labels = {"host": host, "role": role}
            prom.add_target(f"exporter-{role}", exporter.address, labels)
            prom.add_target(f"node-{role}", node_exporter.address, labels)

        status = root / "status" / "training_status.json"
        status.parent.mkdir()
        writer = StatusWriter(status)
        started.append(writer)
        queues = root / "training-queue"
        for priority, files in (("high", 2), ("low", 1)):
            (queues / priority).mkdir(parents=True)
            for i in range(files):
                chatml_file(queues / priority / f"batch_{i}.jsonl", 5)
        sidecar = Tunewatch("sidecar", root).start(
            ["training-sidecar", "--status-file", str(status),
             "--queue-dir", f"{queues / 'high'}:high", "--queue-dir", f"{queues / 'low'}:low"],
            env={"TUNEWATCH_RUN": RUN})
        started.append(sidecar)
        prom.add_target("training", sidecar.address, {"host": HOSTS["training"],
                                                      "role": "training"})

        dcgm = DcgmStandIn()
        started.append(dcgm)
        prom.add_target("dcgm", dcgm.address, {"host": DCGM_HOST, "role": "training"})
        for job in ("exporter-training", "exporter-eval", "node-training", "training", "dcgm"):
            prom.wait_up(job, timeout=60)
        yield stack
    finally:
        for item in reversed(started):
            if isinstance(item, subprocess.Popen):
                item.kill()
                item.wait()
            else:
                item.stop()


def test_hardware_panels_return_data_for_each_role(stack: Stack):
    problems = wait_for_panels(stack.prom, load("hardware"), timeout=90,
                               pinned={"host": "|".join(HOSTS.values())})
    assert not problems, "\n".join(problems)


def test_hardware_gpu_panels_return_data_from_dcgm_exporter_series(stack: Stack):
    dash = load("hardware")
    problems = wait_for_panels(stack.prom, dash, timeout=60, titles=GPU_PANELS_FROM_DCGM,
                               pinned={"host": DCGM_HOST, "role": "training"})
    assert not problems, "\n".join(problems)
    # The blank memory temperature sentinel mapped to nothing, the rest to base units.
    temps = stack.prom.query(f'tunewatch_gpu_temperature_celsius{{host="{DCGM_HOST}"}}')
    assert [float(t["value"][1]) for t in temps] == [61.0]
    assert stack.prom.value(f'tunewatch_gpu_sm_clock_hz{{host="{DCGM_HOST}"}}') == 1.98e9


def test_training_panels_return_data_for_each_run(stack: Stack):
    problems = wait_for_panels(stack.prom, load("training"), timeout=90)
    assert not problems, "\n".join(problems)


def test_a_broken_panel_fails_the_check(stack: Stack):
    dash = load("hardware")
    broken = copy.deepcopy(dash)
    victim = next(p for p in broken["panels"] if p["title"] == "GPU power ($role)")
    victim["targets"][0]["expr"] = victim["targets"][0]["expr"].replace(
        "tunewatch_gpu_power_watts", "tunewatch_gpu_power_watt")
    typo_label = next(p for p in broken["panels"] if p["title"] == "Memory used ($role)")
    typo_label["targets"][0]["expr"] = typo_label["targets"][0]["expr"].replace(
        "role=", "rol=")
    undefined = next(p for p in broken["panels"] if p["title"] == "GPU clocks ($role)")
    undefined["targets"][0]["expr"] += ' and on() vector(1) unless on() up{job="$nope"}'
    pinned = {"host": "|".join(HOSTS.values())}
    assert not wait_for_panels(stack.prom, dash, timeout=90, pinned=pinned)
    problems = check_dashboard(stack.prom, broken, pinned=pinned)
    assert any("'GPU power ($role)' A" in p and "no series" in p for p in problems), problems
    assert any("'Memory used ($role)' A" in p for p in problems), problems
    assert any("'GPU clocks ($role)' A" in p and "$nope" in p for p in problems), problems
    # Each broken panel fails once per role value; nothing else fails.
    assert len(problems) == 2 * 3, problems


@pytest.fixture(scope="module")
def evaluators(stack: Stack, tiny_run, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Stack]:
    """The evaluator daemon on the tiny model's three real checkpoints, twice: with the
    local backend, and through the test inference server with deploy_best (the
    inference-server row); an output contract on the suite's regime. Every checkpoint
    evaluated by both before the stack is handed on."""
    from inference_server import InferenceServer

    tmp_path = tmp_path_factory.mktemp("evaluators")
    checkpoints = tmp_path / "checkpoints"
    for source in tiny_run.checkpoints:
        shutil.copytree(source, checkpoints / Path(source).name)
    config = tmp_path / "tunewatch.yml"
    config.write_text(yaml.safe_dump({"evaluator": {"contracts": {
        CONTRACTED_REGIME: {"required_prefix": "1"}}}}))
    env = {"TUNEWATCH_RUN": RUN, "TUNEWATCH_CONFIG": str(config),
           "TUNEWATCH_EVALUATOR__DEVICE": "cpu",
           "TUNEWATCH_EVALUATOR__BATCH_SIZE": "64",
           "TUNEWATCH_EVALUATOR__SETTLE_SECONDS": "1"}
    server = InferenceServer(tmp_path / "server", checkpoint=tiny_run.checkpoints[0],
                             model_id="base").start()
    remote_env = {**env, "TUNEWATCH_EVALUATOR__BACKEND": "remote",
                  "TUNEWATCH_EVALUATOR__REMOTE__URL": server.url,
                  "TUNEWATCH_EVALUATOR__REMOTE__ACTIVATE": "true",
                  "TUNEWATCH_EVALUATOR__REMOTE__DEPLOY_BEST": "true"}
    evaluators = {"evaluator": Tunewatch("evaluator", tmp_path),
                  "evaluator-remote": Tunewatch("evaluator-remote", tmp_path)}
    try:
        for job, evaluator in evaluators.items():
            evaluator.start(["evaluate", "--checkpoints", str(checkpoints), "--data",
                             str(tiny_run.data_dir), "--state-dir", str(tmp_path / job)],
                            env=remote_env if job.endswith("remote") else env)
            stack.prom.add_target(job, evaluator.address,
                                  {"host": HOSTS["eval"], "role": "eval"})
        for job, evaluator in evaluators.items():
            wait_for(lambda job=job: stack.prom.value(
                f'tunewatch_eval_evaluations_total{{job="{job}"}}') == len(
                    tiny_run.checkpoints),
                timeout=400, what=f"{job} to evaluate every checkpoint: "
                                  f"{evaluator.log_tail()}", interval=2)
        yield stack
    finally:
        for job, evaluator in evaluators.items():
            stack.prom.remove_target(job)
            evaluator.stop()
        server.stop()


def test_evaluation_panels_return_data_for_each_run(evaluators: Stack):
    problems = wait_for_panels(evaluators.prom, load("evaluation"), timeout=60)
    assert not problems, "\n".join(problems)


def test_overview_panels_return_data_for_each_run(evaluators: Stack):
    """The Run overview across both hosts; its alert panels need GPUXidErrors firing
    (for: 1m after the first scrape of the recorded XIDs)."""
    problems = wait_for_panels(evaluators.prom, load("overview"), timeout=120)
    assert not problems, "\n".join(problems)

    def firing_hosts() -> set[str]:
        firing = evaluators.prom.query('ALERTS{alertstate="firing", alertname="GPUXidErrors"}')
        return {a["metric"]["host"] for a in firing}

    # The panels need one host's alert; the other host's starts its 1m `for:` from its own
    # first scrape, so it may follow a little later.
    wait_for(lambda: firing_hosts() == set(HOSTS.values()), 120,
             f"GPUXidErrors firing on every host (last: {firing_hosts()})", interval=1.0)


def test_the_batch_size_panel_sees_the_status_files_batch_size(evaluators: Stack):
    assert evaluators.prom.value(f'tunewatch_training_batch_size{{run="{RUN}"}}') == BATCH_SIZE


# --------------------------------------------------------------------------- seed views


@dataclass(frozen=True)
class SeedView:
    """One row of docs/dashboards.md's map of the seeds' views to panels."""

    seed: str
    view: str
    uid: str
    panel_id: int
    title: str


def seed_views() -> list[SeedView]:
    """The map's rows: | seed | view | `uid` | panel id | panel title |."""
    text = DOCS.read_text()
    section = text.split("## The seeds' views", 1)[1].split("\n## ", 1)[0]
    views = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[2].startswith("`tunewatch-"):
            views.append(SeedView(cells[0], cells[1], cells[2].strip("`"), int(cells[3]),
                                  cells[4]))
    return views


def by_uid() -> dict[str, dict[str, Any]]:
    return {d["uid"]: d for d in (json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json"))}


def test_every_seed_view_is_mapped_to_an_existing_panel():
    """Seed 001's control room and seed 002's predictions page, view by view, each on the
    panel the map names (id and title agree, so a moved panel fails here)."""
    views = seed_views()
    dashboards = by_uid()
    assert {v.seed for v in views} == {"001", "002"}
    for view in views:
        panel = next((p for p in dashboards[view.uid]["panels"] if p["id"] == view.panel_id),
                     None)
        assert panel is not None and panel["type"] != "row", view
        assert panel["title"] == view.title, (view, panel["title"])


def test_every_mapped_prometheus_view_returns_data(evaluators: Stack):
    dashboards = by_uid()
    mapped: dict[str, set[str]] = {}
    for view in seed_views():
        if view.uid != "tunewatch-predictions":
            mapped.setdefault(view.uid, set()).add(view.title)
    assert mapped
    for uid, titles in mapped.items():
        pinned = {"host": "|".join(HOSTS.values())} if uid == "tunewatch-hardware" else None
        problems = wait_for_panels(evaluators.prom, dashboards[uid], timeout=60,
                                   pinned=pinned, titles=titles)
        assert not problems, "\n".join(problems)


def test_every_mapped_predictions_view_returns_rows(reader: str):  # noqa: F811
    dash = by_uid()["tunewatch-predictions"]
    ids = {v.panel_id for v in seed_views() if v.uid == "tunewatch-predictions"}
    assert ids
    end = time.time()
    start = end - 6 * 3600
    with psycopg.connect(reader) as conn:
        values = resolve(conn, dash, "demo", start, end)
        for panel in dash["panels"]:
            if panel["id"] not in ids:
                continue
            for target in panel["targets"]:
                rows = conn.execute(expand(target["rawSql"], values, start, end)).fetchall()
                assert rows and any(v is not None for v in rows[0]), panel["title"]
