"""`tunewatch up` (what `make up` runs): the flags of the local stack, and running it.

Why this is all: what the stack is and does lives in tunewatch/stack/ (components, rendered
configs, the supervisor, the status line); this command only reads its one flag.
"""

from __future__ import annotations

import argparse

from tunewatch.core.config import Config
from tunewatch.stack.supervisor import run_stack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None,
                        help="stop after this many seconds (default: run until Ctrl-C)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    return run_stack(cfg, args.duration)
