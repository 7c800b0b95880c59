"""The processes of the local stack: what runs, on which port, and whether it can start.

Why one place: the supervisor starts whatever list it is given, and the rendered Prometheus
config scrapes exactly that list, so "which processes does `make up` run, with which command
lines and ports" is answered here alone, together with the checks that turn a taken port or
a missing binary into a clear error before anything starts.
"""

from __future__ import annotations

import logging
import pwd
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunewatch.core.config import Config, as_dict
from tunewatch.core.errors import UsageError

log = logging.getLogger("tunewatch.stack")
LOCALHOST = "127.0.0.1"
DEMO_TRAINER_PATTERN = r"tunewatch demo-train"
EVALUATOR_PATTERN = r"tunewatch evaluate"


@dataclass
class Component:
    """One process of the stack: how to start it, where it answers, how it is scraped.

    Most components are HTTP servers, ready when `ready_path` answers 200; one that is not
    (PostgreSQL) brings its own `probe`. `env` is added to the stack's environment, `user`
    is the account to run as (given only when the stack runs as root: PostgreSQL refuses
    root), `after_start` runs once the component is ready (creating a database), and
    `stop_signal` is the one that stops it quickly.
    """

    name: str
    argv: list[str]
    port: int
    ready_path: str
    job: str | None = None
    role: str = "training"
    scheme: str = "http"
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    probe: Callable[[], bool] | None = field(default=None, repr=False)
    after_start: Callable[[], None] | None = field(default=None, repr=False)
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}"


def as_user(user: str | None) -> dict[str, Any]:
    """Popen's arguments that run a process as `user` (its group, no other group), or none.

    Why not `runuser -u` (tests/services.py's way): it would stand between the stack and
    the process, so the stop signal would reach runuser rather than PostgreSQL, whose fast
    shutdown is SIGINT."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


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
    """name -> path of each binary on PATH; a clear error naming the missing ones."""
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


def run_env(cfg: Config) -> dict[str, str]:
    """The environment that makes a process one of the run's (exporters/collectors/procenv)."""
    return {"TUNEWATCH_RUN": cfg.run}


def tunewatch_components(cfg: Config, data_dir: Path) -> list[Component]:
    """The tunewatch processes of the stack.

    The trainer and the evaluator carry the run in their environment (TUNEWATCH_RUN), as a
    user's processes do: the host exporter reads it there to label their processes and GPU
    memory with the run, which the per-run efficiency rules join on (MFU on a GPU host).
    """
    demo = demo_dir(cfg, data_dir)
    trainer = []
    if cfg.demo.enabled:
        trainer = [Component(
            "demo-train",
            tunewatch_argv("demo-train", "--output-dir", str(demo),
                           "--web.listen-address", cfg.training.listen_address),
            _port(cfg.training.listen_address), "/-/healthy", job="tunewatch-training",
            env=run_env(cfg),
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
            role="eval", env=run_env(cfg),
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
    """node_exporter and Alertmanager, which start before the tunewatch processes."""
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
    """Prometheus, which starts last, once everything it scrapes answers."""
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


def build_components(cfg: Config, data_dir: Path) -> tuple[list[Component], Component]:
    """Every component in start order, and Prometheus (the last of them)."""
    st = cfg.stack
    bins = check_binaries([st.prometheus_bin, st.alertmanager_bin, st.node_exporter_bin])
    components = base_components(cfg, data_dir, bins) + tunewatch_components(cfg, data_dir)
    prom = prometheus_component(cfg, data_dir, bins)
    return [*components, prom], prom
