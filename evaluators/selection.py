"""Choosing the evaluator a command runs: local or remote, with its flags applied and checked.

Why one place: `tunewatch eval-once`, `tunewatch compare` and `tunewatch evaluate` each let
flags override the evaluator section (`--backend`, `--remote-url`, `--data`, ...). A flag can
break a rule the configuration was checked against when it loaded (`--backend remote` with
no `evaluator.remote.url`), so the section is checked again after the flags are applied, and
a broken rule is a UsageError (exit status 2), worded as the configuration check words it.
Then `evaluate_checkpoint` (the checkpoint loaded here) or a `RemoteEvaluator` (through the
inference server) is chosen, sharing the client's counters with the deployer of
`remote.deploy_best` where the daemon asks for one.

    chosen = evaluator_for(cfg, Overrides.from_flags(args))
    result = chosen.evaluate(checkpoint, chosen.config, limit=args.limit)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

from evaluators.backends.remote import RemoteEvaluator
from evaluators.evaluate import Evaluate, evaluate_checkpoint
from evaluators.remote.client import InferenceClient, RemoteStats
from evaluators.remote.deploy import Deployer, history_path
from tunewatch.core.config import Config, EvaluatorConfig, remote_errors
from tunewatch.core.errors import UsageError

# Flags whose value must be a positive count (named as the command line spells them).
_AT_LEAST_ONE = ("batch_size", "max_new_tokens", "limit")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """--backend and --remote-url, shared by `tunewatch eval-once`, `compare` and `evaluate`."""
    parser.add_argument("--backend", choices=("local", "remote"), default=None,
                        help="override evaluator.backend (remote: the inference server)")
    parser.add_argument("--remote-url", dest="remote_url", default=None,
                        help="override evaluator.remote.url")


def backend_config_flags(args: argparse.Namespace) -> dict[str, tuple[str, Any]]:
    """The configuration keys --backend and --remote-url set, for loading the configuration
    (`config_flags` of a command): a rule that needs the URL then sees the flag's."""
    found: dict[str, tuple[str, Any]] = {}
    if getattr(args, "backend", None) is not None:
        found["evaluator.backend"] = ("--backend", args.backend)
    if getattr(args, "remote_url", None) is not None:
        found["evaluator.remote.url"] = ("--remote-url", args.remote_url)
    return found


@dataclass(frozen=True)
class Overrides:
    """The values of the flags a command got; None means the flag was not given.

    Each field but `remote_url` and `limit` replaces the evaluator key of the same name;
    `remote_url` replaces evaluator.remote.url. `limit` (a quick subset of N examples) is
    not configuration, but it is checked with the other counts.
    """

    backend: str | None = None
    remote_url: str | None = None
    checkpoints: str | None = None
    data: str | None = None
    state_dir: str | None = None
    device: str | None = None
    batch_size: int | None = None
    max_new_tokens: int | None = None
    listen_address: str | None = None
    web_config_file: str | None = None
    limit: int | None = None

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> Overrides:
        """The fields a command's flags set (their `dest` is the field's name); a flag the
        command does not have stays None."""
        return cls(**{f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)})

    def check_counts(self) -> None:
        """UsageError unless every count given (--batch-size, ...) is at least 1."""
        for name in _AT_LEAST_ONE:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    def section_keys(self) -> dict[str, Any]:
        """The evaluator keys these flags replace (remote.url and limit apart)."""
        skip = {"remote_url", "limit"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


def apply_overrides(ev: EvaluatorConfig, overrides: Overrides) -> EvaluatorConfig:
    """The evaluator section with the flags applied, checked again (UsageError if broken)."""
    overrides.check_counts()
    ev = dataclasses.replace(ev, **overrides.section_keys())
    if overrides.remote_url is not None:
        ev = dataclasses.replace(ev, remote=dataclasses.replace(ev.remote,
                                                                url=overrides.remote_url))
    errors = remote_errors(ev)
    if errors:
        raise UsageError("; ".join(errors))
    return ev


@dataclass(frozen=True)
class EvaluatorSelection:
    """What a command evaluates with.

    config: the evaluator section, flags applied and checked. evaluate: evaluate_checkpoint,
    or a RemoteEvaluator with evaluate_checkpoint's signature. remote_stats: the inference
    client's counters for /metrics (None when no server is used). deployer: the deployer of
    `remote.deploy_best`, only when asked for (the daemon) and configured.
    """

    config: EvaluatorConfig
    evaluate: Evaluate
    remote_stats: RemoteStats | None
    deployer: Deployer | None


LOCAL_BACKEND_MODULES = ("torch", "transformers")


def require_modules(names: tuple[str, ...]) -> None:
    """Raise ModuleNotFoundError for the first of `names` not installed, before any work.

    Why up front: the local backend imports torch at the first evaluation, where a host
    installed without it (the evaluator extra brings no torch) would fail every checkpoint
    with a traceback; the command line turns this into one line naming the package.
    """
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def evaluator_for(cfg: Config, overrides: Overrides | None = None, *,
                  deploy: bool = False) -> EvaluatorSelection:
    """The evaluator of `cfg.evaluator.backend` after the flags in `overrides`.

    deploy: also build the Deployer when `evaluator.remote.deploy_best` is set (the daemon
    deploys the best checkpoint after each evaluation; eval-once and compare never do). Its
    client shares the counters of the remote evaluator. Raises UsageError for a flag that
    is out of range or breaks an evaluator.remote rule.
    """
    ev = apply_overrides(cfg.evaluator, overrides or Overrides())
    remote = ev.backend == "remote"
    if not remote:
        require_modules(LOCAL_BACKEND_MODULES)
    deploying = deploy and ev.remote.deploy_best
    stats = RemoteStats() if remote or deploying else None
    evaluate: Evaluate = RemoteEvaluator(ev, cfg.run, stats) if remote else evaluate_checkpoint
    deployer = (Deployer(InferenceClient(ev.remote, stats), history_path(ev))
                if deploying else None)
    return EvaluatorSelection(ev, evaluate, stats, deployer)
