"""`tunewatch config`: validate the configuration and print the effective values.

Why: with a YAML file and environment overrides, a user needs one way to see what a process
will really use before starting a long run. Loading and validating is the dispatcher's (a bad
file exits 2 before this runs); this command prints the result, whole or one section.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from tunewatch.core.config import Config, as_dict
from tunewatch.core.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--section", default=None, help="print only this top-level section")


def run(args: argparse.Namespace, cfg: Config) -> int:
    data = as_dict(cfg)
    if args.section:
        if args.section not in data:
            raise UsageError(f"no section '{args.section}' (known: {', '.join(sorted(data))})")
        data = {args.section: data[args.section]}
    sys.stdout.write(f"# source: {cfg.source}\n")
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0
