"""The shared metrics server and the collector framework, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import bcrypt
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from exporters.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_ACCEPT,
    SCRAPE_TIMEOUT_HEADER,
    TEXT_CONTENT_TYPE,
    prometheus_scrape_headers,
    render_text,
)
from exporters.framework import CollectorSet
from exporters.server import (
    MetricsServer,
    ServerOptions,
    ServerStartError,
    parse_listen_address,
    section_options,
)
from exporters.webconfig import WebConfigError, load_web_config
from tunewatch.core.config import ConfigError, load_config


class Fixed:
    """A collector that yields one gauge."""

    def __init__(self, name: str, value: float = 1.0) -> None:
        self.name = name
        self.value = value

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(f"tunewatch_test_{self.name}", "test gauge")
        family.add_metric([], self.value)
        yield family

    def close(self) -> None:
        pass


class Raising(Fixed):
    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("sensor on fire")


class Blocking(Fixed):
    """Blocks until released: a hung driver call, or a scrape held open on purpose."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def collect(self) -> Iterator[Metric]:
        self.entered.release()
        self.release.wait(30)
        yield from super().collect()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def serve(collectors: list, timeout: float = 2.0, **options) -> tuple[MetricsServer, CollectorSet]:
    registry = CollectorRegistry()
    collector_set = CollectorSet(collectors, timeout)
    registry.register(collector_set)
    server = MetricsServer(registry, "127.0.0.1:0", options=ServerOptions(**options))
    server.start()
    return server, collector_set


@pytest.fixture
def plain():
    server, cs = serve([Fixed("a")], ready=lambda: True)
    yield server
    server.stop()
    cs.close()


def test_endpoints(plain: MetricsServer):
    status, headers, body = fetch(plain.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"tunewatch_test_a 1.0" in body
    assert fetch(plain.url + "/-/healthy")[0] == 200
    assert fetch(plain.url + "/-/ready")[0] == 200
    status, _, page = fetch(plain.url + "/")
    assert status == 200 and b'href="/metrics"' in page
    assert fetch(plain.url + "/nope")[0] == 404


class Labelled(Fixed):
    """A fixed family with labels, so that label rendering is part of what is compared."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("tunewatch_test_labelled", "labelled", labels=["gpu", "uuid"])
        for gpu in range(3):
            family.add_metric([str(gpu), f"GPU-{gpu}"], 1.5e10 + gpu)
        yield family


def fixed_server(**options) -> MetricsServer:
    """A server over collectors whose output never changes between two renderings (so
    without the process metrics, whose CPU time moves)."""
    registry = CollectorRegistry()
    registry.register(Fixed("a"))
    registry.register(Labelled("b"))
    server = MetricsServer(registry, "127.0.0.1:0",
                           options=ServerOptions(**{"process_metrics": False, **options}))
    server.start()
    return server


def test_prometheus_headers_get_text_gzipped_byte_equal_to_render_text():
    server = fixed_server()
    try:
        status, headers, body = fetch(server.url + "/metrics", prometheus_scrape_headers(10))
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(body) == render_text(server.registry)
    finally:
        server.stop()


def test_openmetrics_only_accept_gets_text_when_openmetrics_is_off():
    """client_golang without EnableOpenMetrics: text for an Accept it does not offer."""
    server = fixed_server()
    try:
        status, headers, body = fetch(server.url + "/metrics", {
            "Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200
        assert headers["Content-Type"] == TEXT_CONTENT_TYPE
        assert "Content-Encoding" not in headers
        assert body == render_text(server.registry)
    finally:
        server.stop()


def test_openmetrics_setting_gives_openmetrics_to_prometheus():
    server = fixed_server(openmetrics=True)
    try:
        status, headers, body = fetch(server.url + "/metrics", prometheus_scrape_headers(10))
        assert status == 200
        assert headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
        assert gzip.decompress(body) == openmetrics_latest(server.registry)
        # A scraper that prefers text still gets text.
        _, headers, body = fetch(server.url + "/metrics", {"Accept": "text/plain"})
        assert headers["Content-Type"] == TEXT_CONTENT_TYPE
        assert body == render_text(server.registry)
    finally:
        server.stop()


@pytest.mark.parametrize("level", [0, 1, 9])
def test_gzip_level(level: int):
    server = fixed_server(gzip_level=level)
    try:
        _, headers, body = fetch(server.url + "/metrics", prometheus_scrape_headers(10))
        if level == 0:
            assert "Content-Encoding" not in headers
            assert body == render_text(server.registry)
        else:
            assert headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(body) == render_text(server.registry)
        # Without gzip in Accept-Encoding the body is never compressed.
        _, headers, body = fetch(server.url + "/metrics", {"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in headers
        assert body == render_text(server.registry)
    finally:
        server.stop()


class _Recorder(BaseHTTPRequestHandler):
    """Answers every GET with one gauge and keeps the request headers it was sent."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = b"tunewatch_test_recorded 1\n"
        self.send_response(200)
        self.send_header("Content-Type", TEXT_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        pass


def test_the_header_constant_is_what_the_real_prometheus_sends(prometheus):
    """PROMETHEUS_ACCEPT (sent by the benchmarks and the tests above) is checked against
    the real binary's scrape requests."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        prometheus.add_target("recorder", f"127.0.0.1:{httpd.server_address[1]}")
        prometheus.wait_up("recorder")
        request = _Recorder.seen[-1]
        assert request["Accept"] == PROMETHEUS_ACCEPT
        assert request["Accept-Encoding"] == "gzip"
        assert float(request[SCRAPE_TIMEOUT_HEADER]) > 0
    finally:
        prometheus.remove_target("recorder")
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("accept", "accept_encoding"), [
    (PROMETHEUS_ACCEPT, "gzip"),
    ("application/openmetrics-text; version=1.0.0", "gzip"),
    ("application/openmetrics-text", ""),
    ("text/plain;version=0.0.4", "identity"),
    ("text/plain;version=1.0.0", "deflate, gzip"),
    ("*/*", ""),
    ("", "br"),
])
def test_negotiates_as_node_exporter_does(node_exporter, accept: str, accept_encoding: str):
    """node_exporter is client_golang's promhttp handler with OpenMetrics off: for the same
    request headers, the same Content-Type and Content-Encoding as ours by default."""
    server = fixed_server()
    headers = {k: v for k, v in {"Accept": accept, "Accept-Encoding": accept_encoding}.items()
               if v}
    try:
        _, theirs, _ = fetch(f"http://{node_exporter.address}/metrics", headers)
        _, ours, _ = fetch(server.url + "/metrics", headers)
    finally:
        server.stop()
    assert ours["Content-Type"] == theirs["Content-Type"]
    assert ours.get("Content-Encoding") == theirs.get("Content-Encoding")


@pytest.mark.parametrize("openmetrics", [False, True])
def test_real_prometheus_scrapes_either_format(prometheus, openmetrics: bool):
    server = fixed_server(openmetrics=openmetrics)
    job = f"negotiated-{openmetrics}".lower()
    try:
        prometheus.add_target(job, f"127.0.0.1:{server.port}")
        prometheus.wait_up(job)
        value = prometheus.wait_value(
            f'tunewatch_test_labelled{{job="{job}",gpu="2"}}', lambda v: v > 0)
        assert value == 1.5e10 + 2
    finally:
        prometheus.remove_target(job)
        server.stop()


def test_name_filter(plain: MetricsServer):
    _, _, body = fetch(plain.url + "/metrics?name[]=tunewatch_test_a")
    text = body.decode()
    assert "tunewatch_test_a 1.0" in text
    assert "tunewatch_exporter_collector_success" not in text


def test_ready_reflects_the_callback():
    state = {"ready": False}
    server, cs = serve([], ready=lambda: state["ready"])
    try:
        assert fetch(server.url + "/-/ready")[0] == 503
        assert fetch(server.url + "/-/healthy")[0] == 200
        state["ready"] = True
        assert fetch(server.url + "/-/ready")[0] == 200
    finally:
        server.stop()
        cs.close()


def test_failing_collector_reports_zero_and_the_scrape_answers():
    server, cs = serve([Fixed("good"), Raising("bad")])
    try:
        status, _, body = fetch(server.url + "/metrics")
        text = body.decode()
        assert status == 200
        assert "tunewatch_test_good 1.0" in text
        assert 'tunewatch_exporter_collector_success{collector="good"} 1.0' in text
        assert 'tunewatch_exporter_collector_success{collector="bad"} 0.0' in text
        assert ('tunewatch_exporter_collector_failures_total{collector="bad",reason="error"} 1.0'
                in text)
    finally:
        server.stop()
        cs.close()


def test_hung_collector_times_out_and_is_not_run_twice():
    hung = Blocking("hung")
    server, cs = serve([Fixed("good"), hung], timeout=0.3)
    try:
        for expected in (1.0, 2.0):
            start = time.monotonic()
            status, _, body = fetch(server.url + "/metrics")
            assert status == 200 and time.monotonic() - start < 5
            text = body.decode()
            assert 'tunewatch_exporter_collector_success{collector="hung"} 0.0' in text
            assert "tunewatch_test_good 1.0" in text
            line = ('tunewatch_exporter_collector_failures_total{collector="hung",'
                    f'reason="timeout"}} {expected}')
            assert line in text
        # The second scrape joined the call in flight instead of starting another.
        assert hung.entered.acquire(timeout=0)
        assert not hung.entered.acquire(timeout=0)
        hung.release.set()
        _, _, body = fetch(server.url + "/metrics")
        # The call that finished late belongs to an earlier scrape; this scrape started anew.
        assert 'tunewatch_exporter_collector_success{collector="hung"} 1.0' in body.decode()
    finally:
        hung.release.set()
        server.stop()
        cs.close()


def test_concurrency_limit_answers_503_and_recovers():
    slow = Blocking("slow")
    server, cs = serve([slow], timeout=20, max_concurrent_scrapes=2, scrape_wait_seconds=0.2)
    results: list[int] = []
    try:
        threads = [threading.Thread(target=lambda: results.append(
            fetch(server.url + "/metrics")[0])) for _ in range(2)]
        for t in threads:
            t.start()
        assert slow.entered.acquire(timeout=10)
        # Both slots are taken (the second scrape waits on the same collector call).
        deadline = time.monotonic() + 10
        while server.slots._value != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        statuses = [fetch(server.url + "/metrics")[0] for _ in range(5)]
        assert statuses == [503] * 5
        assert fetch(server.url + "/-/healthy")[0] == 200
        slow.release.set()
        for t in threads:
            t.join(10)
        assert results == [200, 200]
        _, _, body = fetch(server.url + "/metrics")
        text = body.decode()
        assert 'tunewatch_exporter_http_requests_rejected_total{reason="too_many_scrapes"} 5.0' \
            in text
    finally:
        slow.release.set()
        server.stop()
        cs.close()


def test_taken_port_is_a_clear_error(plain: MetricsServer):
    other = MetricsServer(CollectorRegistry(), f"127.0.0.1:{plain.port}")
    with pytest.raises(ServerStartError, match=f"cannot listen on 127.0.0.1:{plain.port}"):
        other.start()


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:9945", ("127.0.0.1", 9945)),
    (":9945", ("0.0.0.0", 9945)),
    ("[::1]:9945", ("::1", 9945)),
])
def test_listen_address(address: str, expected: tuple[str, int]):
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9945", "host:", "host:99999", "host:x"])
def test_bad_listen_address(address: str):
    with pytest.raises(ServerStartError, match="HOST:PORT"):
        parse_listen_address(address)


# --------------------------------------------------------------------------- web config


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth(tmp_path: Path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    # Go tools (htpasswd, exporter-toolkit docs) write $2y$; it must be accepted.
    hashed = "$2y$" + hashed[4:]
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n"
                    "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    registry = CollectorRegistry()
    server = MetricsServer(registry, "127.0.0.1:0", web_config=load_web_config(path))
    server.start()
    try:
        assert fetch(server.url + "/metrics")[0] == 401
        assert fetch(server.url + "/metrics", basic("prom", "wrong"))[0] == 401
        assert fetch(server.url + "/metrics", basic("nobody", "s3cret"))[0] == 401
        assert fetch(server.url + "/metrics", {"Authorization": "Basic !!!"})[0] == 401
        status, headers, body = fetch(server.url + "/metrics", basic("prom", "s3cret"))
        assert status == 200
        assert headers["X-Frame-Options"] == "deny"
        assert ('tunewatch_exporter_http_requests_rejected_total{reason="unauthorized"} 4.0'
                in body.decode())
    finally:
        server.stop()


@pytest.mark.parametrize("text,message", [
    ("basic_auth_users:\n  prom: plaintext\n", "must be a bcrypt hash"),
    ("basic_auth_user:\n  prom: x\n", "unknown or unsupported key 'basic_auth_user'"),
    ("tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
     "tls_server_config.cert_file': no such file"),
    ("tls_server_config:\n  cipher_suites: [x]\n",
     "unsupported key 'tls_server_config.cipher_suites'"),
    ("- a\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_web_config_names_the_file_and_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_web_config_file(tmp_path: Path):
    with pytest.raises(WebConfigError, match="cannot read web config"):
        load_web_config(tmp_path / "absent.yml")


def test_concurrent_scrapes_share_one_exposition():
    """Scrapes arriving while an exposition is produced get its bytes; the next one after
    it finished gets a fresh one."""
    from exporters.server import Flights

    flights = Flights()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def produce() -> bytes:
        calls.append(1)
        started.set()
        release.wait(10)
        return f"body {len(calls)}".encode()

    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(flights.run("k", produce)))
               for _ in range(5)]
    threads[0].start()
    assert started.wait(10)
    for t in threads[1:]:
        t.start()
    time.sleep(1.0)  # let the followers join the flight in progress
    release.set()
    for t in threads:
        t.join(10)
    assert results == [b"body 1"] * 5 and len(calls) == 1
    assert flights.run("k", produce) == b"body 2"  # a later scrape: a new collection


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("section", ["exporter", "training", "evaluator"])
def test_exposition_settings_come_from_each_server_section(tmp_path: Path, section: str):
    path = tmp_path / "tunewatch.yml"
    path.write_text(f"{section}:\n  openmetrics: true\n  gzip_level: 6\n")
    cfg = load_config(path, environ={})
    options = section_options(getattr(cfg, section), "t")
    assert (options.openmetrics, options.gzip_level) == (True, 6)
    path.write_text(f"{section}:\n  gzip_level: 10\n")
    with pytest.raises(ConfigError, match=f"{section}.gzip_level"):
        load_config(path, environ={})
