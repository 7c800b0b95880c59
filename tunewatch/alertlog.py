"""The default Alertmanager receiver (`tunewatch alert-log`): webhooks to a JSON-lines file.

Why: with no chat or mail receiver configured, alerts must still land somewhere a person
(and a test) can see. This receiver accepts Alertmanager's webhook payload (version 4),
appends each notification as one JSON line to a file, and logs a one-line summary per alert.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("tunewatch.alertlog")
MAX_BODY_BYTES = 4 * 1024 * 1024


def summarize(payload: dict[str, Any]) -> list[str]:
    """One line per alert: status, name, severity and summary."""
    lines = []
    for alert in payload.get("alerts", []):
        labels = alert.get("labels", {})
        annotations = alert.get("annotations", {})
        lines.append(
            f"{alert.get('status', '?')} {labels.get('alertname', '?')} "
            f"severity={labels.get('severity', '?')} {annotations.get('summary', '')}".strip()
        )
    return lines


class AlertLog:
    """Appends received notifications to a JSON-lines file (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.received = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, payload: dict[str, Any]) -> None:
        line = json.dumps({"received_at": time.time(), **payload}, sort_keys=True)
        with self.lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            self.received += 1
        for text in summarize(payload):
            log.info("alert %s", text)


def make_handler(sink: AlertLog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                self.send_error(400, "missing or oversized body")
                return
            try:
                payload = json.loads(self.rfile.read(length))
                if not isinstance(payload, dict):
                    raise ValueError("payload is not a JSON object")
            except ValueError as exc:
                log.warning("rejected a webhook body: %s", exc)
                self.send_error(400, "body is not a JSON object")
                return
            sink.record(payload)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            body = f"tunewatch alert-log: {sink.received} notifications -> {sink.path}\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

    return Handler


def bind(listen_address: str, sink: AlertLog) -> ThreadingHTTPServer:
    """The receiver's HTTP server on `host:port`, bound and not yet serving; OSError when
    the address cannot be bound."""
    host, _, port = listen_address.rpartition(":")
    return ThreadingHTTPServer((host, int(port)), make_handler(sink))


def serve(server: ThreadingHTTPServer, sink: AlertLog, listen_address: str) -> None:
    """Serve webhooks until interrupted, then close the socket."""
    log.info("alert-log listening on http://%s, writing %s", listen_address, sink.path)
    try:
        server.serve_forever()
    finally:
        server.server_close()
