"""`tunewatch deploy status|rollback`: what the inference server serves, and undoing a deploy.

Why a command: seed 000's rollback plan was a hand-typed curl with a remembered model id.
The evaluator records every deployment of the best checkpoint (evaluators/remote/deploy.py);
`status` prints the served model next to that history, `rollback` re-activates what the
last deployment replaced and records it. Exit status: 0 done, 1 the server or the history
did not allow it (one log line naming the cause), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from evaluators.errors import EvaluationError
from evaluators.remote.client import InferenceClient
from evaluators.remote.deploy import Deployer, DeployError, deploy_target, status, status_text
from tunewatch.core.config import Config

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


def run(args: argparse.Namespace, cfg: Config) -> int:
    """Exit 0 done, 1 the server or the history refused, 2 (UsageError) no server URL."""
    remote, path = deploy_target(cfg.evaluator, args.url, args.history)
    try:
        client = InferenceClient(remote)
        if args.action == "status":
            state = status(client, path)
            sys.stdout.write(json.dumps(state) + "\n" if args.json
                             else status_text(state, path))
            return 0
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
