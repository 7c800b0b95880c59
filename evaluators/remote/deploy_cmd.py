"""`tunewatch deploy status|rollback`: what the inference server serves, and undoing a deploy.

Why a command: seed 000's rollback plan was a hand-typed curl with a remembered model id.
The evaluator records every deployment of the best checkpoint (evaluators/remote/deploy.py);
`status` prints the served model next to that history, `rollback` re-activates what the
last deployment replaced and records it. Exit status: 0 done, 1 the server or the history
did not allow it (one log line naming the cause), 2 a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from evaluators.errors import EvaluationError
from evaluators.remote.client import InferenceClient
from evaluators.remote.deploy import Deployer, DeployError, read_history
from tunewatch.cli import UsageError
from tunewatch.config import Config, EvaluatorConfig

log = logging.getLogger("tunewatch.deploy")

ACTIONS = {"status": "show the deployment status", "rollback": "roll back"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`tunewatch deploy status|rollback [--url URL] [--history FILE] [--json]`."""
    parser.add_argument("action", choices=("status", "rollback"),
                        help="status: served model and history; rollback: undo the last deploy")
    parser.add_argument("--url", default=None, help="override evaluator.remote.url")
    parser.add_argument("--history", default=None,
                        help="override evaluator.remote.deploy_history")
    parser.add_argument("--json", action="store_true", help="print status as JSON")


def history_path(ev: EvaluatorConfig) -> Path:
    """evaluator.remote.deploy_history, or deployments.jsonl under evaluator.state_dir."""
    if ev.remote.deploy_history:
        return Path(ev.remote.deploy_history)
    return Path(ev.state_dir) / "deployments.jsonl"


def _status(client: InferenceClient, path: Path, as_json: bool) -> int:
    history = read_history(path)
    served = client.active_model()
    deployed = history.deployed
    if as_json:
        sys.stdout.write(json.dumps({"url": client.base, "served": served,
                                     "deployed": deployed, "history": history.records}) + "\n")
        return 0
    lines = [f"server     {client.base}", f"served     {served or '(no model)'}",
             f"deployed   {deployed['model_id'] if deployed else '(none recorded)'}"
             f" (history: {path})"]
    if deployed is not None and served != deployed["model_id"]:
        lines.append("note       the served model is not the deployed one (an evaluation"
                     " with remote.activate, or a change made by hand)")
    for record in history.records[-10:]:
        lines.append(f"  {record.get('at', 0):.0f}  {record['action']:<8}"
                     f" {record.get('model_id')}  (replaced {record.get('previous')})")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 0 done, 1 the server or the history refused, 2 (UsageError) no server URL."""
    ev = cfg.evaluator
    url = args.url if args.url is not None else ev.remote.url
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"no inference server URL (got {url!r}): set evaluator.remote.url"
                         " or pass --url http://HOST:PORT")
    remote = dataclasses.replace(ev.remote, url=url)
    path = Path(args.history) if args.history else history_path(ev)
    try:
        client = InferenceClient(remote)
        if args.action == "status":
            return _status(client, path, args.json)
        record = Deployer(client, path).rollback()
    except (EvaluationError, DeployError) as exc:
        log.error("cannot %s: %s", ACTIONS[args.action], exc)
        return 1
    except OSError as exc:  # the history could not be written after the server switched
        log.error("cannot %s: the server was switched but %s could not be written: %s",
                  ACTIONS[args.action], path, exc)
        return 1
    sys.stdout.write(f"{client.base} serves {record['model_id']} again"
                     f" (rolled back {record['previous']})\n")
    return 0
