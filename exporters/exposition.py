"""A fast Prometheus text-format (0.0.4) encoder: byte for byte what client_python writes.

Why: client_python's `generate_latest` escapes every label name and value and formats every
value through a Python function on every scrape (about 12 us per sample here), so 1k series
cost 12 ms, more than the whole scrape's latency budget (p99 under 10 ms,
bench/bench_exporter.py). Most of that work gives the same answer on every scrape: a
series' `name{labels} `, a family's HELP and TYPE lines, a value that did not change.
`TextRenderer` remembers those between scrapes (bounded to a few expositions' worth) and
leaves a tight loop per sample: one dict comparison with the sample at the same position
last time, one look-up for the value, one string per line. At 1k series (23 recorded H100
boards) that is about half the previous encoder's time and a fifth of client_python's.

The output is exactly `generate_latest`'s (tests/test_exposition.py compares bytes): HELP
and TYPE lines, counters named `..._total`, info as `..._info` gauges, statesets as gauges,
gauge histograms as histograms, unknown as untyped; labels sorted by name; `_created`,
`_gsum` and `_gcount` samples moved into gauge families of their own after the family;
names outside the legacy character set escaped to underscores; values in Go's notation
(`1e+07`, `+Inf`, `NaN`); timestamps in milliseconds.

Which format a scrape gets is `negotiate`'s answer, as client_golang's promhttp handler (the
one node_exporter serves with) gives it: the text format whatever the Accept header says,
unless OpenMetrics is switched on for the server; then the scraper's first preference
among the two (client_python's OpenMetrics encoder, which costs about five times the whole
text-format scrape at 1k series; docs/exporter.md has the figures).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import zip_longest
from math import copysign
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import (
    UNDERSCORES,
    escape_label_name,
    escape_metric_name,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# What Prometheus 2.x sends with every scrape (scrape/scrape.go: acceptHeader, gzip, the
# timeout header). The negotiation below is written for it; the benchmarks
# (bench/common.py) and tests send exactly these.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROMETHEUS_ACCEPT_ENCODING = "gzip"
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"


def prometheus_scrape_headers(timeout_seconds: float) -> dict[str, str]:
    """The request headers of a Prometheus 2.x scrape with this scrape timeout."""
    return {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": PROMETHEUS_ACCEPT_ENCODING,
            SCRAPE_TIMEOUT_HEADER: f"{timeout_seconds:g}"}


TYPES = {"counter": "counter", "gauge": "gauge", "summary": "summary",
         "histogram": "histogram", "gaugehistogram": "histogram", "info": "gauge",
         "stateset": "gauge", "unknown": "untyped"}

# Samples of these suffixes (exact family name + suffix) are OpenMetrics-only; the text
# format publishes them as gauge families of their own after the family, in this order.
SPLIT_SUFFIXES = ("_created", "_gcount", "_gsum")

# A cache is emptied once it holds more than CACHE_FACTOR times the lines of the rendering
# just done (at least CACHE_FLOOR lines' worth): room for a few scrapes of changing values.
CACHE_FACTOR = 4
CACHE_FLOOR = 1000

# The one text of zero in the value cache; a hit on it checks the sign (-0.0 == 0.0).
ZERO = "0.0"

# Between these, Go writes a float as Python's repr() does; from 1e6 up Go switches to an
# exponent (floatToGoString), and infinities and NaN have names of their own.
MINUS_INF = float("-inf")
GO_EXPONENT_FROM = 1e6


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(labels: dict[str, str]) -> str:
    """`{a="x",b="y"}`: sorted by name, names and values escaped as client_python does."""
    return "{" + ",".join(f'{escape_label_name(k, UNDERSCORES)}="{_escape_value(v)}"'
                          for k, v in sorted(labels.items())) + "}"


class RowFamily(Metric):
    """A family given as rows `(label values, value)` over fixed label names.

    Why: the GPU collector publishes most of the exporter's ~1k series, one row per GPU
    and field, with label values that repeat scrape after scrape. As rows, building the
    family costs one tuple per series (no Sample, no label dict), and `TextRenderer` writes
    a row as the line start remembered for those label values plus the value. Any other
    reader (client_python's OpenMetrics encoder, `?name[]=` filtering, tests) sees ordinary
    samples, built from the rows when first read; the text output is byte for byte what the
    same samples would give (tests/test_exposition.py, the golden GPU expositions).
    """

    def __init__(self, name: str, documentation: str, typ: str,
                 labelnames: tuple[str, ...]) -> None:
        self.rows: list[tuple[tuple[str, ...], float]] = []
        self._built: list[Sample] | None = None
        super().__init__(name, documentation, typ)
        self.labelnames = labelnames

    @property
    def samples(self) -> list[Sample]:
        """The rows as samples (the name a text scrape shows: `_total` on counters)."""
        if self._built is None or len(self._built) != len(self.rows):
            sname = self.name + "_total" if self.type == "counter" else self.name
            names = self.labelnames
            self._built = [Sample(sname, dict(zip(names, values, strict=True)), value)
                           for values, value in self.rows]
        return self._built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        """Metric.__init__ assigns an empty list; samples come from rows only."""
        if value:
            raise TypeError("RowFamily takes rows (add_row), not samples")

    def add_row(self, values: tuple[str, ...], value: float) -> None:
        """One series: its label values in `labelnames` order, and its value."""
        self.rows.append((values, value))


# One sample's remembered line start: (sample name, its labels as rendered, the text
# `name{labels} `, and the OpenMetrics-only suffix that moves it to a family of its own).
_Line = tuple[str, dict[str, str], str, "str | None"]


class TextRenderer:
    """Renders metric families in the text format, remembering texts between renderings.

    Per family, each sample's line start (`name{labels} `) is remembered by position and
    reused while the sample at that position has the same name and an equal label dict (a
    dict comparison, done in C, is cheaper than rendering labels); values are remembered by
    value, headers and escaped names by key. A remembered text is always checked against,
    or a pure function of, what it was made from, so a stale entry is never wrong, only
    unused. Memory is bounded: line starts of families not seen for CACHE_FACTOR renderings
    are dropped, and any other cache holding more than CACHE_FACTOR renderings' worth of
    entries (values that change every scrape, like power, keep adding some) is replaced by
    an empty one. Thread-safe without a lock: a dict's get and set are atomic, entries are
    written whole, and a replaced cache is a new object, never one emptied under a
    rendering that still uses it.
    """

    def __init__(self) -> None:
        self._values: dict[float, str] = {0.0: ZERO}
        self._labels: dict[tuple[str, ...], tuple[dict[str, str], str]] = {}
        self._headers: dict[tuple[str, str, str], str] = {}
        self._names: dict[str, str] = {}
        self._lines: dict[str, tuple[int, list[_Line]]] = {}
        self._row_lines: dict[tuple[str, str, tuple[str, ...]],
                              tuple[int, dict[tuple[str, ...], str]]] = {}
        self._renderings = 0

    def render(self, families: Iterable[Metric]) -> bytes:
        self._renderings += 1
        out: list[str] = []
        for family in families:
            self._family(family, out)
        self._bound(len(out))
        return "".join(out).encode("utf-8")

    # ------------------------------------------------------------------ internals

    def _bound(self, lines: int) -> None:
        limit = CACHE_FACTOR * max(lines, CACHE_FLOOR)
        if len(self._values) > limit:
            self._values = {0.0: ZERO}  # seeded: a -0.0 can never write the key of 0.0
        if len(self._labels) > limit:
            self._labels = {}
        if len(self._headers) > limit:
            self._headers = {}
        if len(self._names) > limit:
            self._names = {}
        oldest = self._renderings - CACHE_FACTOR
        if any(used < oldest for used, _ in list(self._lines.values())):
            self._lines = {k: v for k, v in list(self._lines.items()) if v[0] >= oldest}
        if any(used < oldest or len(starts) > limit
               for used, starts in list(self._row_lines.values())):
            self._row_lines = {k: v for k, v in list(self._row_lines.items())
                               if v[0] >= oldest and len(v[1]) <= limit}

    def _name(self, name: str) -> str:
        escaped = self._names.get(name)
        if escaped is None:
            escaped = self._names[name] = escape_metric_name(name, UNDERSCORES)
        return escaped

    def _header(self, name: str, mtype: str, documentation: str) -> str:
        key = (name, mtype, documentation)
        text = self._headers.get(key)
        if text is None:
            escaped = self._name(name)
            text = self._headers[key] = (f"# HELP {escaped} {_escape_help(documentation)}\n"
                                         f"# TYPE {escaped} {mtype}\n")
        return text

    def _label_text(self, labels: dict[str, str]) -> str:
        """Remembered by the values alone (cheap to build and hash); the dict it was made
        from must equal this one, names and values, in any order."""
        key = tuple(labels.values())
        entry = self._labels.get(key)
        if entry is not None and entry[0] == labels:
            return entry[1]
        text = _label_text(labels)
        self._labels[key] = (dict(labels), text)
        return text

    def _line(self, sname: str, labels: dict[str, str], split_names: dict[str, str]) -> _Line:
        text = self._label_text(labels) if labels else ""
        return (sname, dict(labels), f"{self._name(sname)}{text} ", split_names.get(sname))

    def _family(self, family: Metric, out: list[str]) -> None:
        if isinstance(family, RowFamily):
            self._rows(family, out)
            return
        ftype = family.type
        name = family.name
        if ftype == "counter":
            name += "_total"
        elif ftype == "info":
            name += "_info"
        out.append(self._header(name, TYPES.get(ftype, ftype), family.documentation))
        split: dict[str, list[str]] = {}
        split_names = {family.name + suffix: suffix for suffix in SPLIT_SUFFIXES}
        values = self._values
        _, before = self._lines.get(family.name, (0, []))
        now: list[_Line] = []
        remember = now.append
        append = out.append
        for sample, line in zip_longest(family.samples, before):
            if sample is None:
                break
            sname, labels, value, timestamp = sample[:4]  # a slice unpacks fastest
            if line is None or line[0] != sname or line[1] != labels:
                line = self._line(sname, labels, split_names)
            remember(line)
            # Formatting a float costs more than the rest of the line: values that did not
            # change since an earlier scrape (most of them) are looked up instead.
            number = values.get(value)
            if number is None:
                if type(value) is float and MINUS_INF < value < GO_EXPONENT_FROM:
                    number = values[value] = repr(value)  # what floatToGoString returns
                else:
                    number = values[value] = floatToGoString(value)
            if number is ZERO and copysign(1.0, value) < 0.0:
                number = "-0.0"  # -0.0 and 0.0 are one key: whichever came first wrote it
            if timestamp is None:
                text = f"{line[2]}{number}\n"
            else:
                text = f"{line[2]}{number} {int(float(timestamp) * 1000):d}\n"
            if line[3] is None:
                append(text)
            else:
                split.setdefault(line[3], []).append(text)
        self._lines[family.name] = (self._renderings, now)
        for suffix in sorted(split):
            out.append(self._header(family.name + suffix, "gauge", family.documentation))
            out.extend(split[suffix])


    def _number(self, value: float) -> str:
        """Go's text of a value, remembered by value (see _family's loop, which inlines it)."""
        number = self._values.get(value)
        if number is None:
            if type(value) is float and MINUS_INF < value < GO_EXPONENT_FROM:
                number = self._values[value] = repr(value)
            else:
                number = self._values[value] = floatToGoString(value)
        if number is ZERO and copysign(1.0, value) < 0.0:
            return "-0.0"
        return number

    def _rows(self, family: RowFamily, out: list[str]) -> None:
        """A RowFamily: each row's line start remembered by its label values (which, with
        the family's name and label names, are all it is made of, so never stale)."""
        sname = family.name + "_total" if family.type == "counter" else family.name
        out.append(self._header(sname, TYPES.get(family.type, family.type),
                                family.documentation))
        key = (family.name, family.type, family.labelnames)
        _, starts = self._row_lines.get(key, (0, {}))
        self._row_lines[key] = (self._renderings, starts)
        values = self._values
        append = out.append
        for labels, value in family.rows:
            start = starts.get(labels)
            if start is None:
                text = _label_text(dict(zip(family.labelnames, labels, strict=True)))
                start = starts[labels] = f"{self._name(sname)}{text if labels else ''} "
            number = values.get(value)
            if number is None or number is ZERO:
                number = self._number(value)
            append(f"{start}{number}\n")


_RENDERER = TextRenderer()

Encoder = Callable[[Any], bytes]


def render_families(families: Iterable[Metric]) -> bytes:
    """The text exposition of the families, exactly as client_python would write it."""
    return _RENDERER.render(families)


def render_text(registry: Any) -> bytes:
    """Encode everything `registry.collect()` yields (the drop-in for `generate_latest`)."""
    return _RENDERER.render(registry.collect())


# --------------------------------------------------------------------------- negotiation


def _accepted(header: str) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of an Accept header, most preferred first, as goautoneg orders them
    (client_golang's parser): by q, then concrete types before `*`. A range with q=0 is
    dropped (RFC 9110: not acceptable), which goautoneg does not do."""
    ranges = []
    for position, part in enumerate(header.split(",")):
        media, *raw = part.split(";")
        media = media.strip().lower()
        if media == "*":
            media = "*/*"
        if media.count("/") != 1:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for item in raw:
            key, sep, val = item.partition("=")
            if not sep:
                continue
            key, val = key.strip().lower(), val.strip()
            if key == "q":
                try:
                    q = float(val)
                except ValueError:
                    q = 0.0  # goautoneg: an unparsable q is 0
            else:
                params[key] = val
        if q > 0:
            kind, sub = media.split("/")
            ranges.append(((-q, kind == "*", sub == "*", position), media, params))
    ranges.sort(key=lambda r: r[0])
    return [(media, params) for _, media, params in ranges]


def negotiate(accept: str, openmetrics: bool = False) -> tuple[Encoder, str]:
    """(encoder, Content-Type) for a scrape's Accept header, as client_golang's promhttp.

    OpenMetrics off (the default, node_exporter's): the text format 0.0.4, whatever the
    header says; client_golang's `Negotiate` falls back to text for anything it does not
    offer, including an Accept that lists only OpenMetrics. OpenMetrics on: the first range
    in preference order that is text 0.0.4 (or unversioned text/plain) or OpenMetrics 1.0.0
    (or unversioned); text when none is. Prometheus's own header then gets OpenMetrics.
    OpenMetrics 0.0.1 (which client_python cannot write) is skipped, so such a range falls
    through to text.
    """
    if openmetrics:
        for media, params in _accepted(accept or ""):
            version = params.get("version", "")
            if media == "text/plain" and version in ("", "0.0.4"):
                break
            if media == "application/openmetrics-text" and version in ("", "1.0.0"):
                return openmetrics_latest, OPENMETRICS_CONTENT_TYPE
    return render_text, TEXT_CONTENT_TYPE


def gzip_accepted(accept_encoding: str) -> bool:
    """Whether the scraper takes gzip: `gzip` listed with a q above 0 (client_golang and
    client_python check the name only; a `gzip;q=0` refusal is honoured here)."""
    for part in (accept_encoding or "").split(","):
        coding, *raw = part.split(";")
        if coding.strip().lower() != "gzip":
            continue
        for item in raw:
            key, _, val = item.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(val) > 0
                except ValueError:
                    return False
        return True
    return False
