"""The `tunewatch` command: one entry point, one subcommand per job.

Subcommand modules are imported only when chosen, so `tunewatch exporter` never pays for
importing torch. Each module listed in SUBCOMMANDS provides:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace, cfg: tunewatch.config.Config) -> int   # exit status
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tunewatch import __version__
from tunewatch.config import ConfigError, load_config
from tunewatch.logsetup import FORMATS, LEVELS, setup_logging

log = logging.getLogger("tunewatch")

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("tunewatch.stack", "run the local stack (Prometheus, Alertmanager, exporters, demo)"),
    "config": ("tunewatch.showconfig", "validate the configuration and print the effective one"),
    "alert-log": ("tunewatch.alertlog", "receive Alertmanager webhooks and log them as JSON lines"),
    "exporter": ("exporters.host", "the host exporter: GPU, process and file metrics (:9945)"),
    "training-sidecar": ("exporters.training.sidecar",
                         "training metrics from a trainer's status file (:9946)"),
    "demo-train": ("tunewatch.demo", "train the tiny demo model with the Prometheus callback"),
    "eval-once": ("evaluators.eval_once", "evaluate one checkpoint on the validation suite"),
    "evaluate": ("evaluators.daemon", "evaluate every new checkpoint and publish metrics (:9947)"),
    "compare": ("evaluators.compare_cmd", "paired comparison of two checkpoints (McNemar)"),
    "deploy": ("evaluators.remote.deploy_cmd",
               "the inference server's served model: status, rollback of the last deploy"),
    "predictions": ("evaluators.predictions.cli",
                    "list, follow and export the predictions kept for each checkpoint"),
}


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit status 2, no traceback."""


def add_log_arguments(parser: argparse.ArgumentParser) -> None:
    """`--log.level` and `--log.format`, as promslog-based exporters spell them."""
    parser.add_argument("--log.level", dest="log_level", default=None, choices=LEVELS,
                        help="only log messages of this level or above (default: log_level)")
    parser.add_argument("--log.format", dest="log_format", default=None, choices=FORMATS,
                        help="text (for a terminal), logfmt or json (default: log_format)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunewatch",
        description="Observability for LLM fine-tuning: exporters, evaluation, alerts.",
    )
    parser.add_argument("--version", action="version", version=f"tunewatch {__version__}")
    parser.add_argument(
        "--config",
        default=None,
        help="path of tunewatch.yml (default: $TUNEWATCH_CONFIG, then ./tunewatch.yml)",
    )
    add_log_arguments(parser)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    subs.required = True
    for name, (_module, text) in SUBCOMMANDS.items():
        subs.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    module_name, text = SUBCOMMANDS[top.command]
    module = importlib.import_module(module_name)
    sub = argparse.ArgumentParser(prog=f"tunewatch {top.command}", description=text)
    sub.add_argument("--config", default=None, help="path of tunewatch.yml (also before COMMAND)")
    add_log_arguments(sub)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    config_path = args.config or top.config
    log_level = args.log_level or top.log_level
    log_format = args.log_format or top.log_format
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        setup_logging("info", log_format or "text")
        log.error("%s", exc)
        return 2
    setup_logging(log_level or cfg.log_level, log_format or cfg.log_format)
    try:
        return int(module.run(args, cfg) or 0)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
