"""The evaluator daemon (`tunewatch evaluate`, :9947): every new checkpoint evaluated once.

Why a daemon: the seeds ran eight, each polling every 5 minutes and loading every checkpoint
to compute one figure. This one notices a complete checkpoint within a second (inotify plus a
periodic rescan, evaluators/discovery.py), evaluates it once with the evaluation core,
compares it on the same examples with the previous and the best checkpoint, keeps what it
needs on disk (evaluators/state.py) and serves the figures on its own /metrics.

Idle means asleep: with nothing new, the loop scans once per `evaluator.rescan_seconds` and
reads no file contents; `tunewatch_eval_scans_total{reason}` counts what started each scan.
`/-/ready` answers 200 once the suite is loaded (the state is read before the server
starts), so a health check knows the figures it serves can be computed. docs/evaluator.md
has the rest.

The parts, one job each:

    scheduler.py      Daemon: the loop (scan, settle, retry with backoff) and its state
    figures.py        what is published: measurement, comparisons, ranking, counters
    hard_examples.py  the wrong answers of each checkpoint, as JSONL training data
    recording.py      the hookup to the predictions recorder (best effort)
    deployment.py     keeping the best checkpoint the served one (remote.deploy_best)

The command (flags, server, signals) is tunewatch/commands/evaluate.py.
"""

from evaluators.daemon.scheduler import Daemon

__all__ = ["Daemon"]
