"""`tunewatch up` (what `make up` runs): the whole stack on 127.0.0.1 in one command.

Why: a newcomer should reach a running Prometheus and Alertmanager, scraping real tunewatch
processes, within a minute and with nothing to configure. The stack starts node_exporter,
Alertmanager, the alert-log webhook receiver, the tunewatch processes that exist, and
Prometheus last (with the repository's rules), keeps their data under `stack.data_dir`,
prints the URLs and a live one-line status, and stops everything on Ctrl-C.

Prometheus gets the repository's prometheus.yml with three changes: its file-based
discovery reads target files this command writes (one per process it really runs, so a
process that does not exist is not scraped), the ports are the configured ones, and the
scrape interval is `stack.scrape_interval_seconds` so the demo moves quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunewatch.cli import UsageError
from tunewatch.config import Config, as_dict

log = logging.getLogger("tunewatch.stack")
LOCALHOST = "127.0.0.1"
DEFAULT_WEBHOOK = "127.0.0.1:9948"
DEMO_TRAINER_PATTERN = r"tunewatch demo-train"
EVALUATOR_PATTERN = r"tunewatch evaluate"


@dataclass
class Component:
    """One process of the stack: how to start it, where it answers, how it is scraped."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    job: str | None = None
    role: str = "training"
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


# --------------------------------------------------------------------------- checks


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def check_ports(components: list[Component]) -> None:
    """Refuse to start when a port is taken, naming the port, the process and the fix."""
    for comp in components:
        if not port_is_free(comp.port):
            raise UsageError(
                f"port {comp.port} for {comp.name} is already in use on {LOCALHOST} "
                f"(see `ss -ltnp 'sport = :{comp.port}'`; a system service of the same name, "
                f"or an earlier `make up`?). Stop it, or choose another port in tunewatch.yml "
                f"or with TUNEWATCH_STACK__{comp.name.upper().replace('-', '_')}_PORT."
            )


def check_binaries(names: list[str]) -> dict[str, str]:
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise UsageError(
            f"not found on PATH: {', '.join(missing)} (run `make up`, which installs the "
            "Debian packages prometheus, prometheus-alertmanager, prometheus-node-exporter)"
        )
    return {name: str(path) for name, path in found.items()}


# --------------------------------------------------------------------------- components


def _port(listen_address: str) -> int:
    return int(listen_address.rpartition(":")[2])


def tunewatch_argv(*args: str) -> list[str]:
    """Run a tunewatch subcommand with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "tunewatch", *args]


def exporter_config(cfg: Config, data_dir: Path) -> Path:
    """The effective config for the stack's host exporter, with the demo's defaults.

    Why a file: the exporter follows processes and directories from lists, which do not fit
    environment overrides. Lists the user configured are kept; empty ones get the demo
    trainer, the evaluator and the demo checkpoint directory, so `make up` shows them.
    """
    data = as_dict(cfg)
    ex = data["exporter"]
    if not ex["processes"]:
        ex["processes"] = [{"name": "trainer", "cmdline_pattern": DEMO_TRAINER_PATTERN},
                           {"name": "evaluator", "cmdline_pattern": EVALUATOR_PATTERN}]
    if not ex["checkpoint_dirs"]:
        ex["checkpoint_dirs"] = [str(demo_dir(cfg, data_dir) / "checkpoints")]
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "exporter.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def demo_dir(cfg: Config, data_dir: Path) -> Path:
    """Where the demo writes checkpoints and its suite: under the stack's data directory."""
    return data_dir / "demo"


def reset_demo(cfg: Config, data_dir: Path) -> None:
    """Each `make up` trains the demo afresh: old checkpoints and the evaluator's memory of
    them would otherwise hide the new run's (same steps, already evaluated)."""
    for path in (demo_dir(cfg, data_dir), data_dir / "evaluator"):
        if path.exists():
            log.info("demo: starting over, removing %s", path)
            shutil.rmtree(path)


def tunewatch_components(cfg: Config, data_dir: Path) -> list[Component]:
    """The tunewatch processes of the stack."""
    demo = demo_dir(cfg, data_dir)
    trainer = []
    if cfg.demo.enabled:
        trainer = [Component(
            "demo-train",
            tunewatch_argv("demo-train", "--output-dir", str(demo),
                           "--web.listen-address", cfg.training.listen_address),
            _port(cfg.training.listen_address), "/-/healthy", job="tunewatch-training",
        )]
    return [
        *trainer,
        Component(
            "exporter",
            tunewatch_argv("exporter", "--config", str(exporter_config(cfg, data_dir)),
                           "--web.listen-address", cfg.exporter.listen_address),
            _port(cfg.exporter.listen_address), "/-/healthy", job="tunewatch-exporter",
        ),
        Component(
            "evaluator",
            tunewatch_argv("evaluate", "--checkpoints", str(demo / "checkpoints"),
                           "--data", str(demo / "data"),
                           "--state-dir", str(data_dir / "evaluator"),
                           "--web.listen-address", cfg.evaluator.listen_address),
            _port(cfg.evaluator.listen_address), "/-/healthy", job="tunewatch-evaluator",
            role="eval",
        ),
        Component(
            "webhook",
            tunewatch_argv("alert-log", "--web.listen-address",
                           f"{LOCALHOST}:{cfg.stack.webhook_port}",
                           "--file", str(data_dir / "alerts.jsonl")),
            cfg.stack.webhook_port, "/",
        ),
    ]


def base_components(cfg: Config, data_dir: Path, bins: dict[str, str]) -> list[Component]:
    st = cfg.stack
    return [
        Component(
            "node_exporter",
            [bins[st.node_exporter_bin],
             f"--web.listen-address={LOCALHOST}:{st.node_exporter_port}"],
            st.node_exporter_port, "/metrics", job="node",
        ),
        Component(
            "alertmanager",
            [bins[st.alertmanager_bin],
             f"--config.file={data_dir / 'alertmanager' / 'alertmanager.yml'}",
             f"--storage.path={data_dir / 'alertmanager' / 'data'}",
             f"--web.listen-address={LOCALHOST}:{st.alertmanager_port}",
             "--cluster.listen-address="],
            st.alertmanager_port, "/-/ready",
        ),
    ]


def prometheus_component(cfg: Config, data_dir: Path, bins: dict[str, str]) -> Component:
    st = cfg.stack
    return Component(
        "prometheus",
        [bins[st.prometheus_bin],
         f"--config.file={data_dir / 'prometheus' / 'prometheus.yml'}",
         f"--storage.tsdb.path={data_dir / 'prometheus' / 'data'}",
         f"--web.listen-address={LOCALHOST}:{st.prometheus_port}",
         "--web.enable-lifecycle"],
        st.prometheus_port, "/-/ready",
    )


# --------------------------------------------------------------------------- rendering


def render_prometheus_config(
    template: dict[str, Any], cfg: Config, data_dir: Path, rules_dir: Path,
    components: list[Component],
) -> dict[str, Any]:
    """The repository's prometheus.yml adapted to this stack (see module docstring)."""
    out = json.loads(json.dumps(template))
    interval = f"{cfg.stack.scrape_interval_seconds}s"
    out.setdefault("global", {}).update(
        {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval}
    )
    out["rule_files"] = [str(rules_dir / "*.yml")]
    out["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [f"{LOCALHOST}:{cfg.stack.alertmanager_port}"]}]}]}
    static_ports = {"prometheus": cfg.stack.prometheus_port,
                    "alertmanager": cfg.stack.alertmanager_port}
    for job in out.get("scrape_configs", []):
        name = job["job_name"]
        if name in static_ports:
            for group in job.get("static_configs", []):
                group["targets"] = [f"{LOCALHOST}:{static_ports[name]}"]
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(data_dir / "prometheus" / "targets" / name / "*.yml")]
    return out


def write_targets(data_dir: Path, template: dict[str, Any], components: list[Component]) -> None:
    """One file_sd file per job, listing only the processes this stack runs."""
    root = data_dir / "prometheus" / "targets"
    if root.exists():
        shutil.rmtree(root)
    for job in template.get("scrape_configs", []):
        if job.get("file_sd_configs"):
            (root / job["job_name"]).mkdir(parents=True, exist_ok=True)
    for comp in components:
        if comp.job is None:
            continue
        path = root / comp.job / f"{comp.name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        group = [{"targets": [comp.address], "labels": {"host": "local", "role": comp.role}}]
        path.write_text(yaml.safe_dump(group, sort_keys=False))


def render_alertmanager_config(source: Path, cfg: Config) -> str:
    """The repository's alertmanager.yml with absolute template paths and the webhook
    receiver on the configured port."""
    data = yaml.safe_load(source.read_text())
    data["templates"] = [str((source.parent / t).resolve()) for t in data.get("templates", [])]
    webhook = f"{LOCALHOST}:{cfg.stack.webhook_port}"
    for receiver in data.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace(DEFAULT_WEBHOOK, webhook)
    return yaml.safe_dump(data, sort_keys=False)


def prepare_files(cfg: Config, data_dir: Path, components: list[Component]) -> None:
    prom_src = Path(cfg.stack.prometheus_config)
    am_src = Path(cfg.stack.alertmanager_config)
    for src in (prom_src, am_src):
        if not src.is_file():
            raise UsageError(f"{src}: not found (run from the repository root, or set "
                             "stack.prometheus_config / stack.alertmanager_config)")
    template = yaml.safe_load(prom_src.read_text())
    rules_dir = (prom_src.parent / "rules").resolve()
    rendered = render_prometheus_config(template, cfg, data_dir, rules_dir, components)
    (data_dir / "prometheus").mkdir(parents=True, exist_ok=True)
    (data_dir / "prometheus" / "prometheus.yml").write_text(
        yaml.safe_dump(rendered, sort_keys=False)
    )
    write_targets(data_dir, template, components)
    (data_dir / "alertmanager").mkdir(parents=True, exist_ok=True)
    (data_dir / "alertmanager" / "alertmanager.yml").write_text(
        render_alertmanager_config(am_src, cfg)
    )


# --------------------------------------------------------------------------- processes


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Stack:
    """Starts components in order, watches them, and stops them in reverse order."""

    def __init__(self, components: list[Component], logs_dir: Path, ready_timeout: float) -> None:
        self.components = components
        self.logs_dir = logs_dir
        self.ready_timeout = ready_timeout
        self.started: list[Component] = []

    def start_all(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for comp in self.components:
            self.start(comp)

    def start(self, comp: Component) -> None:
        comp.log_path = self.logs_dir / f"{comp.name}.log"
        with comp.log_path.open("ab") as fh:
            comp.proc = subprocess.Popen(
                comp.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started.append(comp)
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if comp.proc.poll() is not None:
                raise UsageError(f"{comp.name} exited with status {comp.proc.returncode} at "
                                 f"start; its log ({comp.log_path}):\n{tail(comp.log_path)}")
            if http_ok(comp.url + comp.ready_path):
                log.info("%s ready on %s (pid %d)", comp.name, comp.url, comp.proc.pid)
                return
            time.sleep(0.2)
        raise UsageError(f"{comp.name} not ready on {comp.url}{comp.ready_path} after "
                         f"{self.ready_timeout:.0f}s; its log:\n{tail(comp.log_path)}")

    def dead(self) -> list[Component]:
        return [c for c in self.started if c.proc is not None and c.proc.poll() is not None]

    def stop_all(self, timeout: float = 10.0) -> None:
        for comp in reversed(self.started):
            if comp.proc is None or comp.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                comp.proc.send_signal(signal.SIGTERM)
        for comp in reversed(self.started):
            if comp.proc is None:
                continue
            try:
                comp.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", comp.name, timeout)
                comp.proc.kill()
                comp.proc.wait()
        self.started.clear()


# --------------------------------------------------------------------------- status


def prom_query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=3) as resp:
        return list(json.loads(resp.read())["data"]["result"])


def status_line(prom_url: str, extra: Callable[[str], str] | None = None) -> str:
    """`targets up 4/4 | firing: Watchdog` from Prometheus itself."""
    try:
        ups = prom_query(prom_url, "up")
        firing = prom_query(prom_url, 'ALERTS{alertstate="firing"}')
    except (OSError, ValueError, KeyError) as exc:
        return f"prometheus not answering ({exc})"
    up = sum(1 for r in ups if r["value"][1] == "1")
    down = sorted(r["metric"].get("job", "?") for r in ups if r["value"][1] != "1")
    names = sorted({r["metric"].get("alertname", "?") for r in firing})
    line = f"targets up {up}/{len(ups)}"
    if down:
        line += f" (down: {', '.join(down)})"
    line += f" | firing: {', '.join(names) if names else 'none'}"
    if extra:
        line += extra(prom_url)
    return line


def print_urls(components: list[Component], data_dir: Path) -> None:
    rows = [f"  {c.name:<14} {c.url}" for c in components]
    sys.stderr.write("tunewatch stack is up:\n" + "\n".join(rows) +
                     f"\n  data and logs under {data_dir}\n  Ctrl-C stops everything.\n")


def watch(stack: Stack, prom_url: str, interval: float, duration: float | None) -> int:
    """Print the status until Ctrl-C, the duration, or a component's death."""
    tty = sys.stderr.isatty()
    end = time.monotonic() + duration if duration else None
    last_line = ""
    while end is None or time.monotonic() < end:
        dead = stack.dead()
        if dead:
            for comp in dead:
                log.error("%s exited with status %s; its log (%s):\n%s", comp.name,
                          comp.proc.returncode if comp.proc else "?", comp.log_path,
                          tail(comp.log_path))
            return 1
        line = status_line(prom_url)
        if tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        elif line != last_line:
            log.info("status: %s", line)
        last_line = line
        time.sleep(interval)
    if tty:
        sys.stderr.write("\n")
    return 0


# --------------------------------------------------------------------------- command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")


def build_components(cfg: Config, data_dir: Path) -> tuple[list[Component], Component]:
    st = cfg.stack
    bins = check_binaries([st.prometheus_bin, st.alertmanager_bin, st.node_exporter_bin])
    components = base_components(cfg, data_dir, bins) + tunewatch_components(cfg, data_dir)
    prom = prometheus_component(cfg, data_dir, bins)
    return [*components, prom], prom


def run(args: argparse.Namespace, cfg: Config) -> int:
    data_dir = Path(cfg.stack.data_dir).resolve()
    components, prom = build_components(cfg, data_dir)
    check_ports(components)
    if cfg.demo.enabled:
        reset_demo(cfg, data_dir)
    prepare_files(cfg, data_dir, components)
    stack = Stack(components, data_dir / "logs", cfg.stack.ready_timeout_seconds)

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start_all()
        print_urls(components, data_dir)
        return watch(stack, prom.url, cfg.stack.status_interval_seconds, args.duration)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 0
    finally:
        log.info("stopping the stack")
        stack.stop_all()
