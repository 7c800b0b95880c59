"""The one metrics server every tunewatch process uses (host exporter, training, evaluator).

Why our own and not `prometheus_client.start_http_server`: exporters in this field share
the exporter-toolkit conventions (`--web.listen-address`, `--web.config.file` with TLS,
client certificates and bcrypt basic auth, `/-/healthy`, `/-/ready`, a landing page), and a
monitoring endpoint must degrade by refusing work (HTTP 503 past a concurrent-scrape limit)
rather than by piling up threads until the process falls over. client_python has no basic
auth and no limit. The exposition is negotiated as client_golang's promhttp handler does
(exporters/exposition.py): the text format, byte for byte what client_python writes but
several times faster, for every scrape unless a server section switches `openmetrics` on;
gzip at `gzip_level` when the scraper accepts it (Prometheus always does).

    server = MetricsServer(registry, "127.0.0.1:9945", web_config=load_web_config(path))
    server.start()          # raises ServerStartError naming the address on failure
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import binascii
import html
import logging
import socket
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.exposition import gzip_accepted, negotiate
from exporters.webconfig import WebConfig
from tunewatch import __version__

if TYPE_CHECKING:  # typing.Self is Python 3.11+
    from typing_extensions import Self

log = logging.getLogger("tunewatch.server")

REJECT_REASONS = ("too_many_scrapes", "unauthorized", "tls_handshake")


class ServerStartError(RuntimeError):
    """The server could not listen; the message names the address and the cause."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces, as in node_exporter)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ServerStartError(f"listen address {address!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


@dataclass
class ServerOptions:
    """How the server behaves; every number here is a documented setting, not a constant."""

    title: str = "tunewatch exporter"
    max_concurrent_scrapes: int = 8
    scrape_wait_seconds: float = 1.0
    request_timeout_seconds: float = 10.0
    ready: Callable[[], bool] = field(default=lambda: True)
    links: dict[str, str] = field(default_factory=dict)
    # OpenMetrics for scrapers that prefer it (Prometheus does); off: always the text format.
    openmetrics: bool = False
    # zlib level of gzip responses, 1 (fastest) to 9; 0 never compresses.
    gzip_level: int = 1
    # client_python's process_* and python_* families about this process (SelfMetrics);
    # off only where a test needs an exposition that never changes between two renderings.
    process_metrics: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.gzip_level <= 9:  # fail at start, not on every gzip scrape
            raise ValueError(f"gzip_level {self.gzip_level}: must be 0 (never) to 9")


class RejectionCounter:
    """`tunewatch_exporter_http_requests_rejected_total{reason}`: refusals are visible."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REJECT_REASONS, 0)

    def inc(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "tunewatch_exporter_http_requests_rejected",
            "HTTP requests refused by the metrics server, by reason.",
            labels=["reason"],
        )
        with self._lock:
            for reason, count in self._counts.items():
                family.add_metric([reason], count)
        yield family

    def describe(self) -> list[Metric]:
        return list(self.collect())


class SelfMetrics:
    """client_python's standard `process_*` and `python_*` metrics about this process.

    Why: an exporter's own CPU, memory, file descriptors and garbage collections are what
    an operator looks at first when a scrape is slow or a host is short of memory; every
    Prometheus exporter publishes them (client_golang's process and Go collectors), and the
    soak benchmark reads RSS growth from them. Registered by each MetricsServer beside
    its rejection counter, so every tunewatch server has them, the in-trainer callback's
    included (there they describe the trainer process).
    """

    _shared: tuple[Any, ...] | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def _collectors(cls) -> tuple[Any, ...]:
        """One set per process: GCCollector hooks `gc.callbacks` for good, so a server
        retried many times (the callback on a taken port) must not add a hook each time."""
        with cls._shared_lock:
            if cls._shared is None:
                from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

                scratch = CollectorRegistry()  # GCCollector insists on registering somewhere
                cls._shared = (ProcessCollector(registry=None),
                               PlatformCollector(registry=None), GCCollector(registry=scratch))
            return cls._shared

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors():
            yield from collector.collect()

    def describe(self) -> list[Metric]:
        return []


class _Filtered:
    """`?name[]=...` as in client_python, without relying on collectors' describe().

    Our collectors describe nothing up front (describing would mean collecting), so the
    registry's own restriction cannot map names to them; filtering the families works.
    """

    def __init__(self, registry: CollectorRegistry, names: set[str]) -> None:
        self.registry = registry
        self.names = names

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            samples = [s for s in family.samples
                       if family.name in self.names or s.name in self.names]
            if samples:
                family.samples = samples
                yield family


class Flights:
    """Scrapes that arrive while the same exposition is being produced share its result.

    Why: collection and encoding are CPU-bound; ten scrapers hitting an exporter at once
    would otherwise pay ten times for identical output and, past the concurrency limit,
    get 503s. A scrape only ever joins a collection that started after the previous
    one finished, so nobody gets data older than one collection (the singleflight pattern).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Any, Future[bytes]] = {}

    def run(self, key: Any, produce: Callable[[], bytes]) -> bytes:
        with self._lock:
            future = self._running.get(key)
            leader = future is None
            if future is None:
                future = Future()
                self._running[key] = future
        if leader:
            try:
                future.set_result(produce())
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._lock:
                    self._running.pop(key, None)
        return future.result()


def _encode(encoder: Callable[[Any], bytes], registry: Any, gzipped: bool, level: int) -> bytes:
    body = encoder(registry)
    # zlib with gzip framing (wbits=31) at the configured level: gzip.compress's default,
    # level 9, costs about ten times level 1 for 20% fewer bytes (docs/exporter.md).
    # compressobj, not zlib.compress(wbits=...): that keyword is Python 3.11+; same bytes.
    if not gzipped:
        return body
    packer = zlib.compressobj(level=level, method=zlib.DEFLATED, wbits=31)
    return packer.compress(body) + packer.flush()


class _HTTPServer(ThreadingHTTPServer):
    """Threads per connection; the TLS handshake happens in that thread, not the acceptor."""

    daemon_threads = True
    allow_reuse_address = True
    owner: MetricsServer

    def finish_request(self: Self, request: Any, client_address: Any) -> None:
        ctx = self.owner.web_config.ssl_context
        if ctx is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        request.settimeout(self.owner.options.request_timeout_seconds)
        try:
            wrapped = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.owner.rejections.inc("tls_handshake")
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            self.RequestHandlerClass(wrapped, client_address, self)
        finally:
            wrapped.close()


class _HTTPServer6(_HTTPServer):
    """The same server on an IPv6 listen address."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"tunewatch/{__version__}"
    # Headers and body go out in two writes; with Nagle's algorithm on, a small body then
    # waits for the client's delayed ACK (40 ms on Linux) on every keep-alive scrape.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        # Per instance: the servers differ. typeshed declares it a ClassVar; socketserver
        # reads self.timeout.
        self.timeout = self.server.owner.options.request_timeout_seconds  # type: ignore[misc]
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        owner = self.server.owner
        if not self._authorized(owner):
            owner.rejections.inc("unauthorized")
            self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="tunewatch"'})
            return
        url = urlsplit(self.path)
        route = {
            "/metrics": self._metrics,
            "/-/healthy": self._healthy,
            "/-/ready": self._ready,
            "/": self._landing,
        }.get(url.path)
        if route is None:
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8")
            return
        route(parse_qs(url.query))

    def _authorized(self, owner: MetricsServer) -> bool:
        auth = owner.web_config.basic_auth
        if auth is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return auth.check(user, password)

    def _metrics(self, params: dict[str, list[str]]) -> None:
        owner = self.server.owner
        if not owner.slots.acquire(timeout=owner.options.scrape_wait_seconds):
            owner.rejections.inc("too_many_scrapes")
            self._send(503, b"Too many concurrent scrapes; retry later\n",
                       "text/plain; charset=utf-8", {"Retry-After": "1"})
            return
        try:
            registry: Any = owner.registry
            if "name[]" in params:
                registry = _Filtered(registry, set(params["name[]"]))
            encoder, content_type = negotiate(self.headers.get("Accept", ""),
                                              owner.options.openmetrics)
            level = owner.options.gzip_level
            gzipped = level > 0 and gzip_accepted(self.headers.get("Accept-Encoding", ""))
            key = (content_type, gzipped, tuple(sorted(params.get("name[]", []))))
            # Compression is part of the shared flight: concurrent scrapers pay for it once.
            body = owner.flights.run(key, lambda: _encode(encoder, registry, gzipped, level))
        finally:
            owner.slots.release()
        self._send(200, body, content_type, {"Content-Encoding": "gzip"} if gzipped else None)

    def _healthy(self, _params: dict[str, list[str]]) -> None:
        self._send(200, b"Healthy\n", "text/plain; charset=utf-8")

    def _ready(self, _params: dict[str, list[str]]) -> None:
        if self.server.owner.options.ready():
            self._send(200, b"Ready\n", "text/plain; charset=utf-8")
        else:
            self._send(503, b"Not ready\n", "text/plain; charset=utf-8")

    def _landing(self, _params: dict[str, list[str]]) -> None:
        opts = self.server.owner.options
        links = {"/metrics": "Metrics", "/-/healthy": "Health", "/-/ready": "Readiness"}
        links.update(opts.links)
        items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                        for href, text in links.items())
        title = html.escape(opts.title)
        page = (f"<!DOCTYPE html><html><head><title>{title}</title></head><body>"
                f"<h1>{title}</h1><p>tunewatch {__version__}</p><ul>{items}</ul>"
                "</body></html>\n")
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**self.server.owner.web_config.headers, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class MetricsServer:
    """Serves one registry on one address until stopped; runs in a daemon thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        listen_address: str,
        *,
        web_config: WebConfig | None = None,
        options: ServerOptions | None = None,
    ) -> None:
        self.registry = registry
        self.listen_address = listen_address
        self.web_config = web_config or WebConfig()
        self.options = options or ServerOptions()
        self.slots = threading.BoundedSemaphore(self.options.max_concurrent_scrapes)
        self.flights = Flights()
        self.rejections = RejectionCounter()
        registry.register(self.rejections)
        self.self_metrics = SelfMetrics() if self.options.process_metrics else None
        if self.self_metrics is not None:
            registry.register(self.self_metrics)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host, _ = parse_listen_address(self.listen_address)
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        host = f"[{host}]" if ":" in host else host
        return f"{self.web_config.scheme}://{host}:{self.port}"

    def start(self) -> None:
        """Bind and serve in the background; a taken port is a ServerStartError."""
        host, port = parse_listen_address(self.listen_address)
        server_cls = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            httpd = server_cls((host, port), _Handler)
        except OSError as exc:
            # Leave the registry as it was, so that a retry can start another server on it.
            self.registry.unregister(self.rejections)
            if self.self_metrics is not None:
                self.registry.unregister(self.self_metrics)
            raise ServerStartError(
                f"cannot listen on {self.listen_address}: {exc.strerror or exc}") from exc
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="metrics-server",
                                        daemon=True)
        self._thread.start()
        log.info("serving metrics on %s/metrics", self.url)

    def stop(self) -> None:
        """Stop accepting and close the socket (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


# --------------------------------------------------------------------------- command line


def add_web_arguments(parser: Any, section: str) -> None:
    """The exporter-toolkit flags every tunewatch server takes; defaults come from `section`."""
    parser.add_argument("--web.listen-address", dest="listen_address", default=None,
                        help=f"HOST:PORT to serve on (default: {section}.listen_address)")
    parser.add_argument("--web.config.file", dest="web_config_file", default=None,
                        help="exporter-toolkit web config: TLS, client certificates, basic "
                             f"auth (default: {section}.web_config_file)")


def start_server(registry: CollectorRegistry, listen_address: str, web_config_file: str,
                 options: ServerOptions) -> MetricsServer:
    """Load the web config and start serving; every failure is a ServerStartError."""
    from exporters.webconfig import WebConfigError, load_web_config

    try:
        web_config = load_web_config(web_config_file)
    except WebConfigError as exc:
        raise ServerStartError(str(exc)) from exc
    server = MetricsServer(registry, listen_address, web_config=web_config, options=options)
    server.start()
    return server


def section_options(section: Any, title: str) -> ServerOptions:
    """A config section's server settings (exporter, training, evaluator):
    max_concurrent_scrapes, scrape_wait_seconds, openmetrics, gzip_level."""
    return ServerOptions(title=title, max_concurrent_scrapes=section.max_concurrent_scrapes,
                         scrape_wait_seconds=section.scrape_wait_seconds,
                         openmetrics=section.openmetrics, gzip_level=section.gzip_level)


def start_for_section(registry: CollectorRegistry, section: Any, title: str,
                      listen_address: str | None = None,
                      web_config_file: str | None = None,
                      ready: Callable[[], bool] | None = None) -> MetricsServer:
    """Serve `registry` with a config section's server settings (exporter, training,
    evaluator: listen_address, web_config_file and `section_options`); the command-line
    flags, when given, win. `ready` answers
    `/-/ready`: each process passes what "able to answer with real data" means for it."""
    options = section_options(section, title)
    if ready is not None:
        options.ready = ready
    return start_server(registry, listen_address or section.listen_address,
                        web_config_file or section.web_config_file, options)


def freeze_startup_objects() -> None:
    """Move everything allocated at start (modules, config, collectors) out of the garbage
    collector's sight. Why: a full collection otherwise walks all of it in the middle of
    a scrape; at 1k series this was the difference between a p99 of 25 ms and under 10 ms
    (bench/bench_exporter.py). Called by tunewatch's own server processes only, never
    inside a user's trainer."""
    import gc

    gc.collect()
    gc.freeze()


def wait_for_stop_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM (a clean exit for both)."""
    import signal

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stop.wait(1.0):
        pass


def run_until_signal(stop: Callable[[], None]) -> None:
    """What a tunewatch server process does once it listens: freeze the start-up objects,
    block until SIGINT or SIGTERM, then `stop` (whatever ended the wait)."""
    freeze_startup_objects()
    try:
        wait_for_stop_signal()
    finally:
        stop()
