"""`tunewatch alert-log`: the flags of the default Alertmanager receiver, and running it.

Why this is all: the receiver (payload checks, the JSON-lines file, the summaries) lives in
tunewatch/alertlog.py; this command chooses the address and file from flags or config.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tunewatch.alertlog import AlertLog, bind, serve
from tunewatch.core.config import Config

log = logging.getLogger("tunewatch.alertlog")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web.listen-address", dest="listen", default=None,
                        help="host:port (default 127.0.0.1:<stack.webhook_port>)")
    parser.add_argument("--file", default=None,
                        help="JSON-lines file (default <stack.data_dir>/alerts.jsonl)")


def run(args: argparse.Namespace, cfg: Config) -> int:
    listen = args.listen or f"127.0.0.1:{cfg.stack.webhook_port}"
    sink = AlertLog(Path(args.file or Path(cfg.stack.data_dir) / "alerts.jsonl"))
    try:
        server = bind(listen, sink)
    except OSError as exc:
        log.error("cannot listen on %s: %s", listen, exc.strerror)
        return 1
    serve(server, sink, listen)
    return 0
