"""The fast text encoder says exactly what client_python's encoder says, parsed."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
)
from prometheus_client.parser import text_string_to_metric_families
from services import promtool_check_metrics

from exporters.exposition import render_text


class Families:
    """One family of every kind, with label values that need escaping."""

    def collect(self):
        g = GaugeMetricFamily("tunewatch_test_level", 'help with \\ and\nnewline',
                              labels=["a", "b"])
        g.add_metric(['quote " here', "back\\slash"], 1.5)
        g.add_metric(["new\nline", ""], math.inf)
        g.add_metric(["x", "y"], -math.inf)
        g.add_metric(["nan", "y"], math.nan)
        g.add_metric(["big", "y"], 2.0780679168e10)
        yield g
        c = CounterMetricFamily("tunewatch_test_events", "events", labels=["reason"])
        c.add_metric(["boom"], 3)
        yield c
        i = InfoMetricFamily("tunewatch_test_run", "run facts")
        i.add_metric([], {"run": "r1", "model": "qwen"})
        yield i
        s = StateSetMetricFamily("tunewatch_test_state", "state")
        s.add_metric([], {"training": True, "idle": False})
        yield s
        h = HistogramMetricFamily("tunewatch_test_latency_seconds", "latency",
                                  buckets=[("0.1", 1), ("+Inf", 3)], sum_value=0.7)
        yield h


def parsed(text: str) -> set[tuple]:
    out = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            value = "nan" if s.value != s.value else s.value
            out.add((family.name, family.type, family.documentation, s.name,
                     tuple(sorted(s.labels.items())), value))
    return out


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(Families())
    Counter("tunewatch_test_plain", "a client_python counter (with _created)",
            registry=reg).inc()
    return reg


def test_same_samples_as_client_python():
    reg = registry()
    assert parsed(render_text(reg).decode()) == parsed(generate_latest(reg).decode())


def test_promtool_accepts_it():
    assert promtool_check_metrics(render_text(registry()).decode()) == ""
