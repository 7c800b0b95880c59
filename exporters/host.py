"""`tunewatch exporter`: the host exporter (GPU, process and files collectors) on :9945.

Why one process per host: the GPU, the run's processes and the checkpoint and queue
directories are facts about a host, read on every scrape by isolated collectors (see
exporters/framework.py), the way node_exporter reads the rest of the host. Collectors are
switched on and off in the config (`exporter.collectors`) or with node_exporter-style flags,
which win over the config:

    tunewatch exporter --no-collector.gpu --web.listen-address 0.0.0.0:9945
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.collectors import COLLECTORS
from exporters.framework import Collector, CollectorSet
from exporters.server import (
    ServerStartError,
    add_web_arguments,
    freeze_startup_objects,
    start_for_section,
    wait_for_stop_signal,
)
from tunewatch import __version__
from tunewatch.config import Config, ExporterConfig

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_web_arguments(parser, "exporter")
    for name in COLLECTORS:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(f"--collector.{name}", dest=f"collector_{name}",
                           action="store_const", const=True, default=None,
                           help=f"enable the {name} collector (default: exporter.collectors)")
        group.add_argument(f"--no-collector.{name}", dest=f"collector_{name}",
                           action="store_const", const=False, help=f"disable the {name} collector")


def enabled_collectors(cfg: ExporterConfig, args: argparse.Namespace) -> list[str]:
    """Config first, flags over it; an unknown name in the config is a usage error."""
    from tunewatch.cli import UsageError

    unknown = sorted(set(cfg.collectors) - set(COLLECTORS))
    if unknown:
        raise UsageError(f"exporter.collectors: unknown collector(s) {', '.join(unknown)} "
                         f"(known: {', '.join(COLLECTORS)})")
    chosen = []
    for name in COLLECTORS:
        flag = getattr(args, f"collector_{name}", None)
        if (cfg.collectors.get(name, True) if flag is None else flag):
            chosen.append(name)
    return chosen


def build_collectors(cfg: ExporterConfig, names: list[str]) -> list[Collector]:
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


def run(args: argparse.Namespace, cfg: Config) -> int:
    from tunewatch.cli import UsageError

    ex = cfg.exporter
    names = enabled_collectors(ex, args)
    registry, collector_set = build_registry(build_collectors(ex, names), ex)
    try:
        server = start_for_section(registry, ex, "tunewatch host exporter",
                                   args.listen_address, args.web_config_file,
                                   ready=collector_set.ready)
    except ServerStartError as exc:
        collector_set.close()
        raise UsageError(str(exc)) from exc
    collector_set.warm_up()
    log.info("collectors enabled: %s", ", ".join(names) or "(none)")
    freeze_startup_objects()
    try:
        wait_for_stop_signal()
    finally:
        server.stop()
        collector_set.close()
    return 0
