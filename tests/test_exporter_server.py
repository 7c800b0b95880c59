"""The shared metrics server and the collector framework, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.framework import CollectorSet
from exporters.server import MetricsServer, ServerOptions, ServerStartError, parse_listen_address
from exporters.webconfig import WebConfigError, load_web_config


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


def test_openmetrics_and_gzip(plain: MetricsServer):
    status, headers, body = fetch(plain.url + "/metrics", {
        "Accept": "application/openmetrics-text; version=1.0.0",
        "Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body).rstrip().endswith(b"# EOF")


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
