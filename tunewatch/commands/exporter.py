"""`tunewatch exporter`: the host exporter (GPU, process and files collectors) on :9945.

Collectors are switched on and off in the config (`exporter.collectors`) or with
node_exporter-style flags, which win over the config:

    tunewatch exporter --no-collector.gpu --web.listen-address 0.0.0.0:9945

This module parses the flags; exporters/host_exporter.py builds and serves the exporter.
"""

from __future__ import annotations

import argparse

from exporters.collectors import COLLECTORS
from exporters.host_exporter import enabled_collectors, start_host_exporter
from exporters.server import add_web_arguments, run_until_signal
from tunewatch.core.config import Config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_web_arguments(parser, "exporter")
    for name in COLLECTORS:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(f"--collector.{name}", dest=f"collector_{name}",
                           action="store_const", const=True, default=None,
                           help=f"enable the {name} collector (default: exporter.collectors)")
        group.add_argument(f"--no-collector.{name}", dest=f"collector_{name}",
                           action="store_const", const=False, help=f"disable the {name} collector")


def run(args: argparse.Namespace, cfg: Config) -> int:
    flags = {name: getattr(args, f"collector_{name}", None) for name in COLLECTORS}
    names = enabled_collectors(cfg.exporter, flags)
    exporter = start_host_exporter(cfg.exporter, names, args.listen_address,
                                   args.web_config_file)
    run_until_signal(exporter.stop)
    return 0
