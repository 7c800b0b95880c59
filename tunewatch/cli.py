"""The `tunewatch` command: one entry point, one subcommand per job.

This is the top of the command layer: tunewatch/commands/ holds one module per subcommand
(argument parsing and `run`), on top of the libraries (exporters/, evaluators/, tunewatch's
applications) and the base (tunewatch/core/). Subcommand modules are imported only when
chosen, so `tunewatch exporter` never pays for importing torch. Each provides:

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args: argparse.Namespace, cfg: tunewatch.core.config.Config) -> int   # exit status

and, where flags set configuration keys that the configuration's rules need to see (the
URL that `deploy_best` requires, given as --remote-url), optionally

    config_flags(args) -> {dotted key: (flag, value)}   # read over the environment
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import re
import signal
import sys

from tunewatch import __version__
from tunewatch.core.config import load_config
from tunewatch.core.errors import ConfigError, UsageError
from tunewatch.core.logsetup import FORMATS, LEVELS, setup_logging

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a program SIGPIPE ended
OWN_PACKAGES = ("tunewatch", "evaluators", "exporters")
log = logging.getLogger("tunewatch")

# name -> one-line help; the module is tunewatch.commands.<name, "-" as "_">.
SUBCOMMANDS: dict[str, str] = {
    "up": "run the local stack (Prometheus, Alertmanager, exporters, demo)",
    "config": "validate the configuration and print the effective one",
    "alert-log": "receive Alertmanager webhooks and log them as JSON lines",
    "exporter": "the host exporter: GPU, process and file metrics (:9945)",
    "training-sidecar": "training metrics from a trainer's status file (:9946)",
    "demo-train": "train the tiny demo model with the Prometheus callback",
    "eval-once": "evaluate one checkpoint on the validation suite",
    "evaluate": "evaluate every new checkpoint and publish metrics (:9947)",
    "compare": "paired comparison of two checkpoints (McNemar)",
    "deploy": "the inference server's served model: status, rollback of the last deploy",
    "predictions": "list, follow and export the predictions kept for each checkpoint",
    "secrets": "create the compose stack's secret files; hand them to non-root readers",
}


def command_module(name: str) -> str:
    """The module of subcommand `name`: one per subcommand, named after it."""
    return f"tunewatch.commands.{name.replace('-', '_')}"


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
    for name, text in SUBCOMMANDS.items():
        subs.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    top, rest = parser.parse_known_args(argv)
    text = SUBCOMMANDS[top.command]
    try:
        module = importlib.import_module(command_module(top.command))
    except ModuleNotFoundError as exc:
        if _ours(exc):
            raise
        setup_logging("info", top.log_format or "text")
        log.error("%s", missing_package(top.command, exc))
        return 2
    sub = argparse.ArgumentParser(prog=f"tunewatch {top.command}", description=text)
    sub.add_argument("--config", default=None, help="path of tunewatch.yml (also before COMMAND)")
    add_log_arguments(sub)
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    config_path = args.config or top.config
    log_level = args.log_level or top.log_level
    log_format = args.log_format or top.log_format
    flags = module.config_flags(args) if hasattr(module, "config_flags") else {}
    try:
        cfg = load_config(config_path, flags=flags)
    except ConfigError as exc:
        setup_logging("info", log_format or "text")
        log.error("%s", exc)
        return 2
    setup_logging(log_level or cfg.log_level, log_format or cfg.log_format)
    try:
        code = int(module.run(args, cfg) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below, not at exit
        return code
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return closed_stdout()
    except ModuleNotFoundError as exc:  # a package imported only on the way
        if _ours(exc):
            raise
        log.error("%s", missing_package(top.command, exc))
        return 2


def _ours(exc: ModuleNotFoundError) -> bool:
    """A module of this project missing is a bug to show whole, not an install to advise."""
    return (exc.name or "").split(".")[0] in OWN_PACKAGES


def missing_package(command: str, exc: ModuleNotFoundError) -> str:
    """One line for a host installed for another role (README, "Installing by role"): which
    package this command needs and which extra of tunewatch brings it."""
    name = (exc.name or str(exc)).split(".")[0]
    extra = _extra_bringing(name)
    if extra:
        how = f"pip install -c constraints.txt '.[{extra}]'"
    elif name == "torch":
        how = ("install the torch build for this host (the CUDA one for its GPU; no extra "
               "brings torch), or evaluate through evaluator.backend: remote")
    else:
        how = "install it"
    return (f"tunewatch {command} needs the Python package {name!r}, which is not installed "
            f"in this environment: {how} (README, \"Installing by role\")")


def _extra_bringing(module: str) -> str | None:
    """The extra of tunewatch's metadata that requires the distribution named `module`."""
    try:
        requirements = importlib.metadata.requires("tunewatch") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    wanted = module.lower().replace("_", "-")
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        extra = re.search(r'extra == "([^"]+)"', requirement)
        if name and extra and name.group(0).lower().replace("_", "-") == wanted:
            return extra.group(1)
    return None


def closed_stdout() -> int:
    """The reader of our output went away (`tunewatch predictions export | head -1`): not an
    error to report with a traceback. stdout is pointed at /dev/null so that the flush at
    exit does not fail again, and the status is the one a killed-by-SIGPIPE program has."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
