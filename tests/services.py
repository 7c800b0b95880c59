"""Real Prometheus, Alertmanager, node_exporter and PostgreSQL for the tests.

Why real binaries: the seeds' monitoring looked fine in its own unit tests and reported
loss=inf for days. Here every claim about metrics is checked by the real scraper and the
real query engine. Each service runs on 127.0.0.1 on a free port, in a temporary directory,
is started by the test session and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

LOCALHOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A test service could not start or answer; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The binary's path, or a failure telling how to get it.

    Why a failure and never a skip: promtool, amtool, Prometheus and the others are what
    the tests check the project against, and the bootstrap installs them, so a missing one
    is a broken test machine that a skip would report as green.
    """
    path = shutil.which(name)
    if path is None:
        raise ServiceError(missing_binary_message(name))
    return path


def missing_binary_message(name: str) -> str:
    """What a test says when a binary the bootstrap installs is not on PATH."""
    return (f"{name} not found on PATH: run the bootstrap, scripts/bootstrap.sh (`make "
            "bootstrap`; `make test` runs it too), which installs the Debian packages "
            "prometheus (with promtool), prometheus-alertmanager (with amtool), "
            "prometheus-node-exporter and postgresql")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET a URL; (status, body), with HTTP errors returned rather than raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll predicate until true; raise naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError) as exc:
            last_error = exc
        time.sleep(interval)
    raise ServiceError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})"
    )


def _http_ok(url: str) -> bool:
    status, _ = http_get(url, timeout=2.0)
    return status == 200


class Service:
    """A child process with a log file, stopped by PID."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                env=env, start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 30.0) -> None:
        def alive_and_ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            return probe()

        try:
            wait_for(alive_and_ready, timeout, f"{self.name} to be ready")
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"{exc}\n--- {self.name} log ---\n{self.log_tail()}") from exc

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)


class LoopbackService(Service):
    """A Service answering HTTP on a free 127.0.0.1 port: its port, address and url, and a
    start that waits until a path of it answers 200.

    Why: every server the tests run (the real binaries, tunewatch, the ones a test defines)
    listens on loopback and is ready once a health path answers; one place picks the port
    and polls it, so a server class says only its command line and that path.
    """

    def __init__(self, name: str, workdir: Path, scheme: str = "http") -> None:
        super().__init__(name, workdir)
        self.port = free_port()
        self.address = f"{LOCALHOST}:{self.port}"
        self.url = f"{scheme}://{self.address}"

    def launch(self, argv: list[str], ready_path: str) -> None:
        """Spawn argv; return once GET ready_path answers 200 (stopped and raised if not)."""
        self.spawn(argv)
        self.wait_ready(lambda: _http_ok(f"{self.url}{ready_path}"))


# --------------------------------------------------------------------------- Prometheus


class Prometheus(LoopbackService):
    """A real Prometheus; targets are added at run time through file-based discovery."""

    def __init__(self, workdir: Path, scrape_interval: str = "1s") -> None:
        super().__init__("prometheus", workdir)
        self.sd_dir = workdir / "file_sd"
        self.sd_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.scrape_interval = scrape_interval
        self.extra_scrape_configs: list[dict[str, Any]] = []
        self.rule_files: list[str] = []
        self.alertmanager_urls: list[str] = []

    def render_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "rule_files": list(self.rule_files),
            "scrape_configs": [
                {
                    "job_name": "file_sd",
                    "file_sd_configs": [
                        {"files": [str(self.sd_dir / "*.json")], "refresh_interval": "1s"}
                    ],
                },
                *self.extra_scrape_configs,
            ],
        }
        if self.alertmanager_urls:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": self.alertmanager_urls}]}]
            }
        return config

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.render_config(), sort_keys=False))

    def start(self) -> Prometheus:
        self.write_config()
        self.launch(
            [
                require_binary("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.address}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d",
            ],
            "/-/ready",
        )
        return self

    def reload(self) -> None:
        """Write the config and ask Prometheus to load it; fail if it refused it."""
        self.write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            raise ServiceError(f"prometheus refused its config: {exc.read()!r}") from exc

    def reload_with_extra_scrape_config(self, scrape_config: dict[str, Any]) -> None:
        """Add (or replace, by job_name) a raw scrape_config, e.g. for TLS and basic auth."""
        name = scrape_config["job_name"]
        self.extra_scrape_configs = [
            c for c in self.extra_scrape_configs if c["job_name"] != name
        ] + [scrape_config]
        self.reload()

    def set_rule_files(self, paths: list[str | Path]) -> None:
        self.rule_files = [str(p) for p in paths]
        self.reload()

    def add_target(
        self, job: str, address: str, labels: dict[str, str] | None = None, scheme: str = "http"
    ) -> None:
        """Scrape `address` as job `job` (plus labels) from now on."""
        target_labels = {"job": job, **(labels or {})}
        if scheme != "http":
            target_labels["__scheme__"] = scheme
        group = [{"targets": [address], "labels": target_labels}]
        tmp = self.sd_dir / f".{job}.json.tmp"
        tmp.write_text(json.dumps(group))
        tmp.rename(self.sd_dir / f"{job}.json")

    def remove_target(self, job: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.sd_dir / f"{job}.json").unlink()

    def api(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=10)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise ServiceError(f"prometheus {path} {params}: {status} {payload}")
        return payload["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; the `result` list."""
        return list(self.api("/api/v1/query", {"query": promql})["result"])

    def query_range(self, promql: str, start: float, end: float, step: str = "1s") -> list[Any]:
        params = {"query": promql, "start": str(start), "end": str(end), "step": step}
        return list(self.api("/api/v1/query_range", params)["result"])

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) > 1:
            raise ServiceError(f"{promql} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def wait_value(
        self, promql: str, predicate: Callable[[float], bool], timeout: float = 30.0
    ) -> float:
        """Wait until the query's single value satisfies predicate; return it."""
        seen: dict[str, float | None] = {}

        def check() -> bool:
            seen["v"] = self.value(promql)
            return seen["v"] is not None and predicate(seen["v"])

        try:
            wait_for(check, timeout, f"{promql} (last value {seen.get('v')})", interval=0.25)
        except ServiceError as exc:
            raise ServiceError(f"{exc}; targets: {self.targets_summary()}") from exc
        value = seen["v"]
        assert value is not None
        return value

    def wait_up(self, job: str, timeout: float = 30.0) -> None:
        """Wait until every target of job is up (up == 1) as Prometheus sees it."""
        self.wait_value(f'min(up{{job="{job}"}})', lambda v: v == 1.0, timeout)

    def targets_summary(self) -> str:
        try:
            data = self.api("/api/v1/targets", {"state": "active"})
        except (ServiceError, OSError, ValueError) as exc:
            return f"(targets unavailable: {exc})"
        return "; ".join(
            f"{t['labels'].get('job')} {t['scrapeUrl']} {t['health']} {t['lastError']}"
            for t in data["activeTargets"]
        )


# --------------------------------------------------------------------------- others


class Alertmanager(LoopbackService):
    """A real Alertmanager (Debian's prometheus-alertmanager), clustering off."""

    def __init__(self, workdir: Path, config_text: str) -> None:
        super().__init__("alertmanager", workdir)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config_text)

    def start(self) -> Alertmanager:
        self.launch(
            [
                require_binary("prometheus-alertmanager"),
                f"--config.file={self.config_path}",
                f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address={self.address}",
                "--cluster.listen-address=",
            ],
            "/-/ready",
        )
        return self

    def alerts(self) -> list[dict[str, Any]]:
        _status, body = http_get(f"{self.url}/api/v2/alerts")
        return list(json.loads(body))


class NodeExporter(LoopbackService):
    """A real node_exporter on a free port."""

    def __init__(self, workdir: Path) -> None:
        super().__init__("node_exporter", workdir)

    def start(self) -> NodeExporter:
        self.launch(
            [require_binary("prometheus-node-exporter"), f"--web.listen-address={self.address}"],
            "/metrics",
        )
        return self


class Postgres(Service):
    """A real PostgreSQL cluster run as the postgres user (it refuses root)."""

    user = "postgres"

    def __init__(self) -> None:
        # Not under pytest's 0700 tmp dirs: the postgres user must be able to traverse it.
        workdir = Path(tempfile.mkdtemp(prefix="tunewatch-pg-"))
        os.chmod(workdir, 0o755)
        super().__init__("postgres", workdir)
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.socket_dir = workdir / "sock"
        self.dsn = f"postgresql://{self.user}@{LOCALHOST}:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        for version_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (version_dir / name).exists():
                return str(version_dir / name)
        return require_binary(name)

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return [require_binary("runuser"), "-u", self.user, "--", *argv]
        return argv

    def start(self) -> Postgres:
        pw = pwd.getpwnam(self.user)
        self.socket_dir.mkdir()
        for path in (self.workdir, self.socket_dir):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        initdb = self._as_postgres(
            [self._bin("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", self.user,
             "-E", "UTF8", "--no-sync"]
        )
        done = subprocess.run(initdb, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceError(f"initdb failed: {done.stderr.strip()}")
        self.log_path.touch()
        os.chown(self.log_path, pw.pw_uid, pw.pw_gid)
        self.spawn(
            self._as_postgres(
                [self._bin("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-k", str(self.socket_dir), "-c", f"listen_addresses={LOCALHOST}",
                 "-c", "fsync=off"]
            )
        )
        self.wait_ready(self._accepting)
        return self

    def _accepting(self) -> bool:
        done = subprocess.run(
            [self._bin("pg_isready"), "-h", LOCALHOST, "-p", str(self.port), "-U", self.user],
            capture_output=True, check=False,
        )
        return done.returncode == 0

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
            with contextlib.suppress(ServiceError):
                wait_for(lambda: not _pid_alive(pid), timeout, "postgres to stop")
        super().stop(timeout)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- tunewatch


class Tunewatch(LoopbackService):
    """A `tunewatch SUBCOMMAND` child process serving /metrics on a free port."""

    def start(self, args: list[str], env: dict[str, str] | None = None,
              probe: Callable[[], bool] | None = None, timeout: float = 60.0) -> Tunewatch:
        """Run `tunewatch ARGS --web.listen-address ...`; wait until /-/healthy answers."""
        full_env = {**os.environ, **(env or {})}
        self.spawn([sys.executable, "-m", "tunewatch", *args,
                    "--web.listen-address", self.address], env=full_env)
        self.wait_ready(probe or (lambda: _http_ok(f"{self.url}/-/healthy")), timeout)
        return self

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, f"{self.name} /metrics answered {status}"
        return body.decode()


def promtool_check_metrics(text: str) -> str:
    """What `promtool check metrics` says about an exposition (empty when it is clean)."""
    proc = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text.encode(),
                          capture_output=True, timeout=60)
    out = (proc.stdout + proc.stderr).decode()
    return out if proc.returncode or out.strip() else ""


# --------------------------------------------------------------------------- alerting


class AlertPipeline:
    """Evaluator -> Prometheus (the repository's eval alert rules) -> Alertmanager (the
    repository's routing) -> `tunewatch alert-log`, all real, on free ports under workdir.

    Shared by the end-to-end alert test and bench/bench_alerting.py. `group_wait` overrides
    Alertmanager's (None keeps the repository's 30 s).
    """

    def __init__(self, workdir: Path, repo: Path, group_wait: str | None = None) -> None:
        from tunewatch.core.config import load_config
        from tunewatch.stack.render import render_alertmanager_config

        self.workdir = workdir
        self.repo = repo
        self.webhook_port = free_port()
        cfg = load_config(None, environ={"TUNEWATCH_STACK__WEBHOOK_PORT": str(self.webhook_port)})
        am_text = render_alertmanager_config(repo / "alertmanager" / "alertmanager.yml", cfg)
        if group_wait is not None:
            am_text = am_text.replace("group_wait: 30s", f"group_wait: {group_wait}")
        self.log_file = workdir / "alerts.jsonl"
        for sub in ("am", "prom"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.am = Alertmanager(workdir / "am", am_text)
        self.prom = Prometheus(workdir / "prom")
        self.evaluator = Tunewatch("evaluator", workdir)
        self.receiver: subprocess.Popen[bytes] | None = None

    def start(self, checkpoints: Path, data: Path, run: str, host: str) -> AlertPipeline:
        self.receiver = subprocess.Popen(
            [sys.executable, "-m", "tunewatch", "alert-log", "--web.listen-address",
             f"{LOCALHOST}:{self.webhook_port}", "--file", str(self.log_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: _http_ok(f"http://{LOCALHOST}:{self.webhook_port}/"), 30, "alert-log")
        self.am.start()
        self.prom.alertmanager_urls = [f"{LOCALHOST}:{self.am.port}"]
        self.prom.rule_files = [str(self.repo / "prometheus" / "rules" / "eval.alerts.yml")]
        self.prom.start()
        self.evaluator.start(["evaluate", "--checkpoints", str(checkpoints), "--data",
                              str(data), "--state-dir", str(self.workdir / "state")],
                             env={"TUNEWATCH_RUN": run})
        self.prom.add_target("tunewatch-evaluator", self.evaluator.address,
                             {"host": host, "role": "eval"})
        self.prom.wait_up("tunewatch-evaluator")
        return self

    def notifications(self) -> list[dict[str, Any]]:
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines()
                if line.strip()]

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        """Firing alerts of that name, as the webhook received them."""
        return [a for n in self.notifications() if n["status"] == "firing"
                for a in n["alerts"]
                if a["labels"]["alertname"] == alertname and a["status"] == "firing"]

    def stop(self) -> None:
        self.evaluator.stop()
        self.prom.stop()
        self.am.stop()
        if self.receiver is not None:
            self.receiver.terminate()
            self.receiver.wait(timeout=10)
