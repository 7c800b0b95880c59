"""`tunewatch predictions`: list, follow, count and export the predictions kept per checkpoint.

Why a CLI next to the dashboard: the SQLite default has no Grafana in front of it, and a
newcomer debugging a run over SSH wants one command. Every action reads the store named by
`predictions.store_url` (or --store) and never writes to it, except `init-db` (migrations
and Grafana's read-only role), `prune` (retention) and `flush` (the spool).

    tunewatch predictions list --run demo --difficulty hard --match no --limit 20 --page 2
    tunewatch predictions follow easy-005 --run demo      # marks where the answer changed
    tunewatch predictions accuracy --run demo              # exact match, last 20/50/100
    tunewatch predictions export --format csv --output preds.csv --step-min 200
    tunewatch predictions init-db --grafana-role tunewatch_grafana \\
        --grafana-password-file secrets/postgres_grafana_password
    tunewatch predictions cost --examples-per-second 12.5 --examples 350
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from evaluators.predictions.cost import cost_text, measured_speed
from evaluators.predictions.export import dump_csv, dump_jsonl
from evaluators.predictions.query import (
    accuracy_text,
    follow,
    follow_jsonl,
    follow_text,
    page,
    page_text,
    parse_time,
    recent_accuracy,
)
from evaluators.predictions.recorder import Recorder, apply_retention, spool_dir
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Filters, Store, StoreError, open_store
from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError

log = logging.getLogger("tunewatch.predictions")


def _filters_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", default=None, help="run name (default: every run)")
    p.add_argument("--step-min", type=int, default=None, help="lowest step")
    p.add_argument("--step-max", type=int, default=None, help="highest step")
    p.add_argument("--since", default=None, help="created at or after (ISO 8601, unix, 2h)")
    p.add_argument("--until", default=None, help="created before (ISO 8601, unix, 2h)")
    p.add_argument("--dataset", default=None, help="suite file, e.g. hard_200.jsonl")
    p.add_argument("--difficulty", default=None)
    p.add_argument("--regime", default=None)
    p.add_argument("--source", default=None)
    p.add_argument("--match", choices=("yes", "no"), default=None,
                   help="only exact matches (yes) or only wrong answers (no)")
    p.add_argument("--failed-too", action="store_true",
                   help="include the failed examples recorded outside the fixed sample")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=None,
                        help="store URL (default: predictions.store_url; empty: SQLite under "
                             "evaluator.state_dir)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="predictions, newest step first, one page")
    _filters_arguments(p)
    p.add_argument("--limit", type=int, default=20, help="rows per page (default 20)")
    p.add_argument("--page", type=int, default=1, help="page number, from 1")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p = sub.add_parser("follow", help="one example across checkpoints, oldest step first, "
                                      "marking where its answer changed")
    p.add_argument("example_id", help="the example's id (as `list` shows it)")
    p.add_argument("--run", default=None)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("accuracy", help="exact match over the last 20, 50 and 100 predictions")
    p.add_argument("--run", default=None)
    p = sub.add_parser("export", help="matching predictions as CSV or JSONL")
    _filters_arguments(p)
    p.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    p.add_argument("--output", default="-", help="file (default: standard output)")
    p = sub.add_parser("init-db", help="create or migrate the schema; optionally the "
                                       "read-only role Grafana uses (PostgreSQL)")
    p.add_argument("--grafana-role", default=None, help="login role that may only SELECT")
    p.add_argument("--grafana-password-file", default=None,
                   help="file holding that role's password (never on the command line)")
    sub.add_parser("prune", help="apply predictions.retention_days now (export first when "
                                 "predictions.export_dir is set)")
    sub.add_parser("flush", help="write the spooled rows to the store now")
    p = sub.add_parser("cost", help="generation time of the recorded rows, per checkpoint "
                                    "and per run")
    p.add_argument("--examples-per-second", type=float, default=None,
                   help="measured speed (default: the evaluator's last measurement)")
    p.add_argument("--examples", type=int, default=None,
                   help="examples in the suite (default: the evaluator's last measurement)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--save-steps", type=int, default=None)


def _filters(args: argparse.Namespace) -> Filters:
    for flag in ("step_min", "step_max"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    match = None if args.match is None else args.match == "yes"
    return Filters(
        run=args.run, step_min=args.step_min, step_max=args.step_max,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
        dataset=args.dataset, difficulty=args.difficulty, regime=args.regime,
        source=args.source, exact_match=match, sampled=None if args.failed_too else True)


def _open(args: argparse.Namespace, cfg: Config) -> Store:
    url = cfg.predictions.store_url if args.store is None else args.store
    try:
        return open_store(url, state_dir=cfg.evaluator.state_dir,
                          connect_timeout=cfg.predictions.connect_timeout_seconds)
    except StoreError as exc:
        raise UsageError(str(exc)) from exc


def _list(store: Store, args: argparse.Namespace) -> int:
    if args.limit < 1 or args.page < 1:
        raise UsageError("--limit and --page must be at least 1")
    found = page(store, _filters(args), size=args.limit, number=args.page)
    if args.json:
        dump_jsonl(found.rows, sys.stdout)
        return 0
    sys.stdout.write(page_text(found))
    return 0


def _follow(store: Store, args: argparse.Namespace) -> int:
    rows = follow(store, args.example_id, args.run)
    if not rows:
        log.error("no predictions recorded for example %r%s", args.example_id,
                  f" in run {args.run!r}" if args.run else "")
        return 1
    if args.json:
        follow_jsonl(rows, sys.stdout)
        return 0
    sys.stdout.write(follow_text(rows))
    return 0


def _accuracy(store: Store, args: argparse.Namespace) -> int:
    sys.stdout.write(accuracy_text(recent_accuracy(store, args.run)))
    return 0


def _export(store: Store, args: argparse.Namespace) -> int:
    filters = _filters(args)
    dump = dump_csv if args.format == "csv" else dump_jsonl
    if args.output == "-":
        n = dump(store.iter_all(filters), sys.stdout)
    else:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as fh:
            n = dump(store.iter_all(filters), fh)
    log.info("exported %d prediction row(s) as %s to %s", n, args.format, args.output)
    return 0


def _init_db(store: Store, args: argparse.Namespace) -> int:
    applied = store.migrate()
    sys.stdout.write(f"{store.name}: schema version {store.version()}"
                     f"{' (applied ' + ', '.join(map(str, applied)) + ')' if applied else ''}\n")
    if args.grafana_role:
        password = None
        if args.grafana_password_file:
            try:
                password = Path(args.grafana_password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UsageError(f"cannot read --grafana-password-file: {exc}") from exc
        store.grant_read_only(args.grafana_role, password)
        sys.stdout.write(f"role {args.grafana_role} may read the predictions\n")
    return 0


def _cost(cfg: Config, args: argparse.Namespace) -> int:
    speed, examples = measured_speed(cfg.evaluator.state_dir)
    speed = args.examples_per_second if args.examples_per_second is not None else speed
    examples = args.examples if args.examples is not None else examples
    if speed is None or examples is None:
        raise UsageError("no measured speed yet: pass --examples-per-second and --examples, "
                         "or let the evaluator measure one checkpoint first")
    if speed <= 0 or examples < 1:
        raise UsageError("--examples-per-second must be above 0 and --examples at least 1")
    max_steps = args.max_steps if args.max_steps is not None else cfg.demo.max_steps
    save_steps = args.save_steps if args.save_steps is not None else cfg.demo.save_steps
    sys.stdout.write(cost_text(cfg.predictions, speed, examples, max_steps, save_steps))
    return 0


# Actions that only read: they never create a store (a SQLite file would be one).
READING = ("list", "follow", "accuracy", "export")


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "cost":
        return _cost(cfg, args)
    if args.store is not None:
        cfg = dataclasses.replace(
            cfg, predictions=dataclasses.replace(cfg.predictions, store_url=args.store))
    store = _open(args, cfg)
    if args.action in READING and store.dialect == "sqlite" and not Path(store.target).exists():
        raise UsageError(f"no predictions store at {store.target} (predictions.store_url or "
                         "--store; relative paths are the current directory's): the evaluator "
                         "creates it when it records predictions, `init-db` makes an empty one")
    actions: dict[str, Any] = {"list": _list, "follow": _follow, "accuracy": _accuracy,
                               "export": _export, "init-db": _init_db}
    try:
        if args.action == "prune":
            n = apply_retention(store, cfg.predictions, now=time.time())
            sys.stdout.write(f"deleted {n} row(s) older than "
                             f"{cfg.predictions.retention_days:g} days\n")
            return 0
        if args.action == "flush":
            spool = Spool(spool_dir(cfg.predictions, cfg.evaluator.state_dir))
            recorder = Recorder(cfg.predictions, store=store, spool=spool, run=cfg.run,
                                background=False)
            ok = recorder.flush()
            sys.stdout.write(f"{recorder.written} spooled row(s) written; "
                             f"{recorder.pending} still pending\n")
            return 0 if ok else 1
        return int(actions[args.action](store, args))
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    finally:
        store.close()

