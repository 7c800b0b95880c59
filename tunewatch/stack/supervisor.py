"""Bringing the local stack up, keeping watch over it, and taking it down again.

Why a supervisor: a stack of half a dozen processes is only useful when it is whole, so each
component is started in order and must answer its readiness URL before the next one starts
(Prometheus last, once everything it scrapes answers); while it runs, a component that dies
ends the stack with its log tail instead of leaving a silent gap; on Ctrl-C or SIGTERM every
process is stopped, in reverse order, and killed if it does not stop in time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError
from tunewatch.stack.components import (
    Component,
    as_user,
    build_components,
    check_ports,
    reset_demo,
)
from tunewatch.stack.grafana import Dashboards, find_grafana, no_grafana_line, plan_dashboards
from tunewatch.stack.render import prepare_files
from tunewatch.stack.status import status_line

log = logging.getLogger("tunewatch.stack")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def tail(path: Path | None, lines: int = 15) -> str:
    """The last lines of a component's log, for an error message."""
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class StopRequests:
    """SIGINT and SIGTERM as one request to stop the stack, raised as KeyboardInterrupt.

    Why not Python's default: a stop often comes as two signals at once (`make` passes the
    SIGTERM sent to its process group on to `tunewatch up`, so it arrives twice; an
    impatient second Ctrl-C). A second KeyboardInterrupt landing in the teardown cut it
    short and left every component not yet signalled running (they run in sessions of
    their own, so no group signal reaches them). The first signal is the request; later
    ones are logged and ignored. While a process is being started (`held`), the request
    waits until the process is on the stack's list, so that it is stopped with the rest.
    """

    def __init__(self) -> None:
        self.requested = False
        self._held = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.handler)

    def handler(self, signum: int, _frame: Any) -> None:
        if self.requested:
            log.info("already stopping the stack; %s ignored", signal.Signals(signum).name)
            return
        self.requested = True
        log.info("stopping the stack (%s)", signal.Signals(signum).name)
        if not self._held:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Within this block a request waits; it is raised at the block's end."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        if self.requested:
            raise KeyboardInterrupt


class Stack:
    """Starts components in order, watches them, and stops them in reverse order."""

    def __init__(self, components: list[Component], logs_dir: Path, ready_timeout: float,
                 stops: StopRequests | None = None, stop_timeout: float = 10.0) -> None:
        self.components = components
        self.logs_dir = logs_dir
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.started: list[Component] = []
        self.stops = stops or StopRequests()

    def start_all(self) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for comp in self.components:
            self.start(comp)

    def start(self, comp: Component) -> None:
        comp.log_path = self.logs_dir / f"{comp.name}.log"
        with self.stops.held(), comp.log_path.open("ab") as fh:
            comp.proc = subprocess.Popen(
                comp.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env={**os.environ, **comp.env} if comp.env else None,
                **as_user(comp.user),
            )
            self.started.append(comp)
        deadline = time.monotonic() + self.ready_timeout
        ready = comp.probe or (lambda: http_ok(comp.url + comp.ready_path))
        while time.monotonic() < deadline:
            if comp.proc.poll() is not None:
                raise UsageError(f"{comp.name} exited with status {comp.proc.returncode} at "
                                 f"start; its log ({comp.log_path}):\n{tail(comp.log_path)}")
            if ready():
                log.info("%s ready on %s (pid %d)", comp.name, comp.url, comp.proc.pid)
                if comp.after_start is not None:
                    comp.after_start()
                return
            time.sleep(0.2)
        raise UsageError(f"{comp.name} not ready on {comp.url}{comp.ready_path} after "
                         f"{self.ready_timeout:.0f}s; its log:\n{tail(comp.log_path)}")

    def dead(self) -> list[Component]:
        return [c for c in self.started if c.proc is not None and c.proc.poll() is not None]

    def stop_all(self) -> None:
        timeout = self.stop_timeout
        for comp in reversed(self.started):
            if comp.proc is None or comp.proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                comp.proc.send_signal(comp.stop_signal)
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


def print_urls(components: list[Component], data_dir: Path, dashboards: str) -> None:
    rows = [f"  {c.name:<14} {c.url}" for c in components]
    sys.stderr.write("tunewatch stack is up:\n" + "\n".join(rows) + f"\n{dashboards}" +
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


def run_stack(cfg: Config, duration: float | None = None) -> int:
    """The whole stack, until Ctrl-C/SIGTERM (status 0), `duration` seconds (0), or a
    component's death (1); a user's mistake (a taken port, a missing binary or config, a
    component that does not start) raises UsageError. With a Grafana binary on PATH the
    stack also runs Grafana and the PostgreSQL of its Predictions dashboard."""
    data_dir = Path(cfg.stack.data_dir).resolve()
    components, prom = build_components(cfg, data_dir)
    dashboards = plan_dashboards(cfg, data_dir, find_grafana(cfg))
    try:
        if dashboards is not None:
            components = dashboards.arrange(components)
        return _run(cfg, data_dir, components, prom, dashboards, duration)
    finally:
        if dashboards is not None:
            dashboards.cleanup()


def _run(cfg: Config, data_dir: Path, components: list[Component], prom: Component,
         dashboards: Dashboards | None, duration: float | None) -> int:
    check_ports(components)
    if cfg.demo.enabled:
        reset_demo(cfg, data_dir)
    prepare_files(cfg, data_dir, components)
    if dashboards is not None:
        dashboards.prepare()
    stops = StopRequests()
    stops.install()
    stack = Stack(components, data_dir / "logs", cfg.stack.ready_timeout_seconds, stops,
                  cfg.stack.stop_timeout_seconds)
    try:
        stack.start_all()
        print_urls(components, data_dir,
                   dashboards.banner() if dashboards else f"  {no_grafana_line(cfg)}")
        return watch(stack, prom.url, cfg.stack.status_interval_seconds, duration)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 0
    finally:
        try:
            by_signal, stops.requested = stops.requested, True  # from now: signals ignored
        except KeyboardInterrupt:  # one came just before: its handler set `requested`
            by_signal = True
        if not by_signal:  # the stack ended on its own (a component died, --duration)
            log.info("stopping the stack")
        stack.stop_all()
