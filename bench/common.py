"""The one way the benchmarks scrape: as Prometheus 2.x does.

Why: a benchmark that scrapes differently from Prometheus measures a path production never
takes. Prometheus asks for OpenMetrics first and for gzip, over a keep-alive connection,
and says its timeout in `X-Prometheus-Scrape-Timeout-Seconds`; a scraper without those
headers was once served by a different (five times slower) encoder than every real
Prometheus. Every timed scrape in bench/ goes through `Scraper`, which sends exactly the
headers of `exporters.exposition.prometheus_scrape_headers` (the tests check them against
the real binary) and decompresses the answer, inside the timing, as Prometheus does.

    scraper = Scraper("127.0.0.1", 9945)
    result = scraper.scrape()          # result.seconds, result.body (decompressed), ...
    scraper.close()
"""

from __future__ import annotations

import http.client
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from exporters.exposition import prometheus_scrape_headers

# Prometheus's default scrape_timeout; the value of the timeout header the benchmarks send.
SCRAPE_TIMEOUT_SECONDS = 10.0


@dataclass
class Scrape:
    """One scrape's answer: the body decompressed, and the seconds it took end to end."""

    status: int
    seconds: float
    body: bytes
    content_type: str
    content_encoding: str

    def series(self) -> int:
        """Sample lines in the body (what Prometheus would ingest)."""
        return sum(1 for line in self.body.splitlines() if line and not line.startswith(b"#"))

    def samples(self) -> dict[str, float]:
        """`name{labels}` -> value of every sample line (text format)."""
        out = {}
        for line in self.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


class Scraper:
    """One target over one keep-alive connection, with Prometheus's request headers.

    A connection the server closed while idle is replaced, as Prometheus's Go client does;
    any other failure (refused, reset, timed out) raises and drops the connection, and the
    next call connects anew, so a caller can count the failure and carry on.
    """

    def __init__(self, host: str, port: int, path: str = "/metrics",
                 timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.host, self.port, self.path = host, port, path
        self.timeout_seconds = timeout_seconds
        self.headers = prometheus_scrape_headers(timeout_seconds)
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def for_url(cls, url: str, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> Scraper:
        """`http://host:port[/path]`; the path defaults to /metrics."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80,
                   parts.path if parts.path not in ("", "/") else "/metrics", timeout_seconds)

    def scrape(self) -> Scrape:
        reused = self._conn is not None
        try:
            return self._request()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed the idle keep-alive connection (after its request timeout);
            # Go's HTTP transport, Prometheus's, sends the request again on a new one.
            return self._request()

    def _request(self) -> Scrape:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port,
                                                    timeout=self.timeout_seconds)
        start = time.perf_counter()
        try:
            self._conn.request("GET", self.path, headers=self.headers)
            resp = self._conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        encoding = resp.getheader("Content-Encoding", "")
        body = zlib.decompress(raw, wbits=31) if encoding == "gzip" else raw
        seconds = time.perf_counter() - start
        return Scrape(resp.status, seconds, body, resp.getheader("Content-Type", ""), encoding)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Scraper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def scrape_once(url: str, timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS) -> Scrape:
    """One scrape of `url` on a connection of its own (polling; nothing timed)."""
    with Scraper.for_url(url, timeout_seconds) as scraper:
        return scraper.scrape()
