"""The host exporter assembled: the enabled collectors, isolated, plus build info, served.

Why one process per host: the GPU, the run's processes and the checkpoint and queue
directories are facts about a host, read on every scrape by isolated collectors (see
exporters/framework.py), the way node_exporter reads the rest of the host. Which
collectors run is the config's `exporter.collectors`, with the command's
`--collector.<name>` / `--no-collector.<name>` flags over it (tunewatch/commands/exporter.py):

    names = enabled_collectors(cfg.exporter, {"gpu": False})   # flags given: gpu off
    exporter = start_host_exporter(cfg.exporter, names)        # listening on :9945
    ...
    exporter.stop()
"""

from __future__ import annotations

import importlib
import logging
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.collectors import COLLECTORS
from exporters.framework import Collector, CollectorSet
from exporters.server import MetricsServer, ServerStartError, start_for_section
from tunewatch import __version__
from tunewatch.core.config import ExporterConfig
from tunewatch.core.errors import UsageError

log = logging.getLogger("tunewatch.exporter")


class BuildInfo:
    """`tunewatch_exporter_build_info`: which version is answering (for upgrades and bugs)."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tunewatch_exporter_build_info",
                                   "tunewatch version and Python version of this exporter.",
                                   labels=["version", "python_version"])
        family.add_metric([__version__, platform.python_version()], 1.0)
        yield family

    def describe(self) -> list[Metric]:
        return list(self.collect())


def enabled_collectors(cfg: ExporterConfig, flags: Mapping[str, bool | None]) -> list[str]:
    """The collectors to run, in COLLECTORS order: the config first, a flag over it
    (True or False; None or absent: not given). An unknown name in the config is a
    usage error."""
    unknown = sorted(set(cfg.collectors) - set(COLLECTORS))
    if unknown:
        raise UsageError(f"exporter.collectors: unknown collector(s) {', '.join(unknown)} "
                         f"(known: {', '.join(COLLECTORS)})")
    chosen = []
    for name in COLLECTORS:
        flag = flags.get(name)
        if (cfg.collectors.get(name, True) if flag is None else flag):
            chosen.append(name)
    return chosen


def build_collectors(cfg: ExporterConfig, names: list[str]) -> list[Collector]:
    """One collector per name; a module is imported only when its collector is enabled."""
    collectors = []
    for name in names:
        module = importlib.import_module(COLLECTORS[name])
        collectors.append(module.create_collector(cfg))
    return collectors


def build_registry(collectors: list[Collector], cfg: ExporterConfig) -> tuple[
        CollectorRegistry, CollectorSet]:
    registry = CollectorRegistry(auto_describe=True)
    collector_set = CollectorSet(collectors, cfg.collector_timeout_seconds)
    registry.register(collector_set)
    registry.register(BuildInfo())
    return registry, collector_set


@dataclass
class HostExporter:
    """A running host exporter: its server and the collectors it runs."""

    server: MetricsServer
    collectors: CollectorSet

    def stop(self) -> None:
        """Stop serving, then close every collector."""
        self.server.stop()
        self.collectors.close()


def start_host_exporter(cfg: ExporterConfig, names: list[str],
                        listen_address: str | None = None,
                        web_config_file: str | None = None) -> HostExporter:
    """Build the collectors `names`, serve them with the exporter section's settings
    (`listen_address` and `web_config_file`, when given, win) and start the first
    collection in the background; /-/ready answers 200 once one collection has finished.

    A server that cannot listen (address in use, bad web config) is a UsageError.
    """
    registry, collector_set = build_registry(build_collectors(cfg, names), cfg)
    try:
        server = start_for_section(registry, cfg, "tunewatch host exporter",
                                   listen_address, web_config_file,
                                   ready=collector_set.ready)
    except ServerStartError as exc:
        collector_set.close()
        raise UsageError(str(exc)) from exc
    collector_set.warm_up()
    log.info("collectors enabled: %s", ", ".join(names) or "(none)")
    return HostExporter(server, collector_set)
