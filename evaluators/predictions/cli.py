"""`tunewatch predictions`: list, follow, score and export the predictions kept per checkpoint.

Why a CLI next to the dashboard: the SQLite default has no Grafana in front of it, and a
newcomer debugging a run over SSH wants one command. Every action reads the store named by
`predictions.store_url` (or --store) and never writes to it, except `init-db` (migrations
and Grafana's read-only role), `prune` (retention) and `flush` (the spool).

    tunewatch predictions list --run demo --difficulty hard --match no --limit 20 --page 2
    tunewatch predictions follow easy-007 --run demo
    tunewatch predictions accuracy --run demo              # exact match, last 20/50/100
    tunewatch predictions export --format csv --output preds.csv --step-min 200
    tunewatch predictions init-db --grafana-role tunewatch_grafana \\
        --grafana-password-file secrets/postgres_grafana_password
    tunewatch predictions cost --examples-per-second 12.5 --examples 350
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from evaluators.predictions import cost as cost_mod
from evaluators.predictions.export import dump_csv, dump_jsonl
from evaluators.predictions.recorder import Recorder, apply_retention, spool_dir
from evaluators.predictions.spool import Spool
from evaluators.predictions.store import Filters, Row, Store, StoreError, open_store
from tunewatch.cli import UsageError
from tunewatch.config import Config

log = logging.getLogger("tunewatch.predictions")

WINDOWS = (20, 50, 100)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str, now: float | None = None) -> float:
    """Unix seconds from ISO 8601 (UTC if no zone), unix seconds, or an age like 2h / 7d."""
    now = time.time() if now is None else now
    if m := _RELATIVE.match(text.strip()):
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(f"cannot read the time {text!r}: use ISO 8601 (2026-01-31T12:00), "
                         "unix seconds or an age such as 30m, 2h, 7d") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


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
    p = sub.add_parser("follow", help="one example across checkpoints, oldest step first")
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


def _short(text: str, width: int) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _table(rows: list[Row]) -> str:
    head = f"{'step':>6} {'example':<16} {'difficulty':<10} {'match':<5} {'failure':<10} " \
           f"{'prompt':<32} {'golden':<20} answer"
    lines = [head]
    for r in rows:
        match = "yes" if r["exact_match"] else ("norm" if r["normalized_match"] else "no")
        lines.append(f"{r['step']:>6} {_short(r['example_id'], 16):<16} "
                     f"{_short(r['difficulty'], 10):<10} {match:<5} "
                     f"{_short(r['failure_mode'] or '', 10):<10} {_short(r['prompt'], 32):<32} "
                     f"{_short(r['golden'], 20):<20} {_short(r['answer'], 40)}")
    return "\n".join(lines) + "\n"


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
    filters = _filters(args)
    rows = store.query(filters, limit=args.limit, offset=(args.page - 1) * args.limit)
    total = store.count(filters)
    if args.json:
        dump_jsonl(rows, sys.stdout)
        return 0
    pages = max(1, -(-total // args.limit))
    sys.stdout.write(_table(rows))
    sys.stdout.write(f"page {args.page} of {pages} ({total} matching rows)\n")
    return 0


def _follow(store: Store, args: argparse.Namespace) -> int:
    rows = store.query(Filters(run=args.run, example_id=args.example_id), newest_first=False)
    if not rows:
        log.error("no predictions recorded for example %r%s", args.example_id,
                  f" in run {args.run!r}" if args.run else "")
        return 1
    if args.json:
        dump_jsonl(rows, sys.stdout)
        return 0
    first = rows[0]
    out = [f"example {first['example_id']} ({first['dataset']}, {first['difficulty']})",
           f"prompt: {_short(first['prompt'], 200)}", f"golden: {_short(first['golden'], 200)}",
           "", f"{'run':<12} {'step':>6} {'epoch':>6} {'match':<5} {'CE':>7} answer"]
    for r in rows:
        epoch = f"{r['epoch']:.2f}" if r["epoch"] is not None else "-"
        ce = f"{r['cross_entropy']:.3f}" if r["cross_entropy"] is not None else "-"
        match = "yes" if r["exact_match"] else ("norm" if r["normalized_match"] else "no")
        out.append(f"{_short(r['run'], 12):<12} {r['step']:>6} {epoch:>6} {match:<5} {ce:>7} "
                   f"{_short(r['answer'], 60)}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def recent_accuracy(store: Store, run: str | None) -> dict[int, tuple[int, int]]:
    """Window -> (exact matches, predictions) over the latest predictions of the sample."""
    latest = store.recent_matches(run, max(WINDOWS))
    return {n: (sum(latest[:n]), len(latest[:n])) for n in WINDOWS}


def _accuracy(store: Store, args: argparse.Namespace) -> int:
    for n, (right, seen) in recent_accuracy(store, args.run).items():
        rate = f"{right / seen * 100:.1f}%" if seen else "-"
        note = "" if seen == n else f" (only {seen} recorded)"
        sys.stdout.write(f"last {n:>3}: exact match {rate} ({right}/{seen}){note}\n")
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


def _measured(cfg: Config) -> tuple[float | None, int | None]:
    """Examples per second and suite size from the evaluator's last published state."""
    path = Path(cfg.evaluator.state_dir) / "state.json"
    try:
        published = json.loads(path.read_text(encoding="utf-8")).get("published", {})
    except (OSError, ValueError, AttributeError):
        return None, None

    def first(name: str, labels: dict[str, str]) -> float | None:
        for row_labels, value in published.get(name, []):
            if row_labels == labels:
                return float(value)
        return None
    examples = first("tunewatch_eval_examples", {"difficulty": "all"})
    return (first("tunewatch_eval_examples_per_second", {}),
            int(examples) if examples is not None else None)


def cost_text(cfg: Config, examples_per_second: float, examples: int,
              max_steps: int | None, save_steps: int | None) -> str:
    est = cost_mod.estimate(cfg.predictions, examples_per_second=examples_per_second,
                            suite_examples=examples, failed_ratio=0.5, max_steps=max_steps,
                            save_steps=save_steps)
    lines = [f"{est.rows_per_checkpoint} row(s) per checkpoint at {examples_per_second:.3g} "
             f"examples/s: {est.checkpoint_seconds:.2f}s of generation per checkpoint"]
    if est.run_seconds is not None:
        lines.append(f"{est.checkpoints} recorded checkpoint(s) per run: "
                     f"{est.run_seconds:.1f}s per run")
    if cfg.predictions.record_failed:
        lines.append("(failed examples estimated at a 50% error rate)")
    return "\n".join(lines) + "\n"


def _cost(cfg: Config, args: argparse.Namespace) -> int:
    speed, examples = _measured(cfg)
    speed = args.examples_per_second if args.examples_per_second is not None else speed
    examples = args.examples if args.examples is not None else examples
    if speed is None or examples is None:
        raise UsageError("no measured speed yet: pass --examples-per-second and --examples, "
                         "or let the evaluator measure one checkpoint first")
    if speed <= 0 or examples < 1:
        raise UsageError("--examples-per-second must be above 0 and --examples at least 1")
    max_steps = args.max_steps if args.max_steps is not None else cfg.demo.max_steps
    save_steps = args.save_steps if args.save_steps is not None else cfg.demo.save_steps
    sys.stdout.write(cost_text(cfg, speed, examples, max_steps, save_steps))
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "cost":
        return _cost(cfg, args)
    if args.store is not None:
        cfg = dataclasses.replace(
            cfg, predictions=dataclasses.replace(cfg.predictions, store_url=args.store))
    store = _open(args, cfg)
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

