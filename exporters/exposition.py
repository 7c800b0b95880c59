"""A fast Prometheus text-format (0.0.4) encoder for metric families.

Why: client_python's `generate_latest` validates and escapes every label name of every
sample on every scrape (about 30 us per sample line here), so 1k series cost 20 ms, twice
the scrape latency budget (p99 under 10 ms, bench/bench_exporter.py). Our label names are
fixed in code, so only label values need escaping, and only when they contain a backslash,
a quote or a newline. The output is the text format client_python writes (HELP, TYPE,
samples; counters named `..._total`; info and
stateset as gauges; `_created` samples as their own gauge family), label order aside;
tests compare the two parsed, and promtool checks it.
OpenMetrics requests still go through client_python's encoder.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

TYPES = {"counter": "counter", "gauge": "gauge", "summary": "summary",
         "histogram": "histogram", "gaugehistogram": "histogram", "info": "gauge",
         "stateset": "gauge", "unknown": "untyped"}


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(text: str) -> str:
    if "\\" in text or '"' in text or "\n" in text:
        return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


INF = float("inf")


def _number(value: float) -> str:
    """Shortest round-trip repr; Prometheus parses it as Go's strconv does (client_python's
    Go-style exponent formatting costs several times more and parses to the same float)."""
    if value != value:
        return "NaN"
    if value == INF:
        return "+Inf"
    if value == -INF:
        return "-Inf"
    return repr(float(value))


def _line(name: str, labels: dict[str, str], value: float, timestamp: float | None,
          rendered: dict[int, str]) -> str:
    if labels:
        # A collector may share one label dict between many samples (a GPU's): render it
        # once per scrape. The dicts live as long as the families, so ids are unique here.
        body = rendered.get(id(labels))
        if body is None:
            body = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels.items())
            rendered[id(labels)] = body
        text = f"{name}{{{body}}} {_number(value)}"
    else:
        text = f"{name} {_number(value)}"
    if timestamp is not None:
        text += f" {int(float(timestamp) * 1000)}"
    return text


def render_families(families: Iterable[Metric]) -> bytes:
    """The text exposition of the families, as client_python would write it."""
    out: list[str] = []
    append = out.append
    rendered: dict[int, str] = {}
    families = list(families)  # keep every label dict alive while ids are cached
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "info":
            name = family.name + "_info"
        append(f"# HELP {name} {_escape_help(family.documentation)}")
        append(f"# TYPE {name} {TYPES.get(family.type, 'untyped')}")
        created = []
        for s in family.samples:
            if s.name.endswith("_created"):
                created.append(s)
            elif s.timestamp is None and s.labels and type(s.value) is float and \
                    s.value - s.value == 0.0:
                # The common case, inlined: labels, a finite float, no timestamp.
                body = rendered.get(id(s.labels))
                if body is None:
                    body = ",".join(f'{k}="{_escape_value(v)}"' for k, v in s.labels.items())
                    rendered[id(s.labels)] = body
                append(f"{s.name}{{{body}}} {s.value!r}")
            else:
                append(_line(s.name, s.labels, s.value, s.timestamp, rendered))
        if created:
            cname = family.name + "_created"
            append(f"# HELP {cname} {_escape_help(family.documentation)}")
            append(f"# TYPE {cname} gauge")
            out.extend(_line(s.name, s.labels, s.value, s.timestamp, rendered) for s in created)
    append("")
    return "\n".join(out).encode("utf-8")


def render_text(registry: object) -> bytes:
    """Encode everything `registry.collect()` yields."""
    return render_families(registry.collect())  # type: ignore[attr-defined]
