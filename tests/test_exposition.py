"""The fast text encoder writes exactly the bytes client_python's `generate_latest` writes,
and the negotiation answers as client_golang's promhttp handler does."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.samples import Exemplar, Sample
from services import promtool_check_metrics

from exporters.collectors.gpu.families import snapshot_families
from exporters.collectors.gpu.recorded import RecordedReader
from exporters.exposition import (
    CACHE_FACTOR,
    CACHE_FLOOR,
    OPENMETRICS_CONTENT_TYPE,
    PROMETHEUS_ACCEPT,
    TEXT_CONTENT_TYPE,
    RowFamily,
    TextRenderer,
    gzip_accepted,
    negotiate,
    render_text,
)

GPU_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


class Families:
    """One family of every kind, with the values and texts that need care."""

    def collect(self):
        g = GaugeMetricFamily("tunewatch_test_level", 'help with \\ and\nnewline',
                              labels=["b", "a"])  # not sorted: the output sorts them
        g.add_metric(['quote " here', "back\\slash"], 1.5)
        g.add_metric(["new\nline", ""], math.inf)
        g.add_metric(["x", "y"], -math.inf)
        g.add_metric(["nan", "y"], math.nan)
        g.add_metric(["big", "y"], 2.0780679168e10)       # Go: 2.0780679168e+10
        g.add_metric(["million", "y"], 1e6)               # the first exponent: 1e+06
        g.add_metric(["below", "y"], 999999.5)
        g.add_metric(["huge", "y"], 1.5e16)               # repr switches too: 1.5e+16
        g.add_metric(["negbig", "y"], -2.5e10)            # Go: -2.5e+10, repr differs
        g.add_metric(["tiny", "y"], 1e-7)
        g.add_metric(["negzero", "y"], -0.0)
        g.add_metric(["zero", "y"], 0.0)
        g.add_metric(["int", "y"], 3)
        g.add_metric(["intzero", "y"], 0)
        g.add_metric(["bool", "y"], True)
        g.add_metric(["stamped", "y"], 7.0, timestamp=1700000000.123)
        g.add_metric(["unicode \u00e9\u4e2d", "y"], 0.1 + 0.2)
        yield g
        c = CounterMetricFamily("tunewatch_test_events", "events", labels=["reason"],
                                created=1700000000.5)
        c.add_metric(["boom"], 3, created=1700000001.25)
        yield c
        i = InfoMetricFamily("tunewatch_test_run", "run facts")
        i.add_metric([], {"run": "r1", "model": "qwen"})
        yield i
        s = StateSetMetricFamily("tunewatch_test_state", "state")
        s.add_metric([], {"training": True, "idle": False})
        yield s
        yield HistogramMetricFamily(
            "tunewatch_test_latency_seconds", "latency",
            buckets=[("0.1", 1, Exemplar({"trace": "t1"}, 0.05)), ("+Inf", 3)], sum_value=0.7)
        yield GaugeHistogramMetricFamily("tunewatch_test_queue_wait_seconds", "queue wait",
                                         buckets=[("1.0", 2), ("+Inf", 5)], gsum_value=4.5)
        yield SummaryMetricFamily("tunewatch_test_step_seconds", "steps", count_value=4,
                                  sum_value=2.25)
        u = UnknownMetricFamily("tunewatch_test_mystery", "untyped", labels=["k"])
        u.add_metric(["v"], 42)
        yield u
        # Named like an OpenMetrics suffix without being one: stays where it is.
        created = GaugeMetricFamily("tunewatch_test_checkpoint_created", "a gauge")
        created.add_metric([], 5.0)
        yield created
        yield GaugeMetricFamily("tunewatch_test_empty", "no samples at all")
        # Names outside the legacy character set are escaped to underscores.
        dotted = GaugeMetricFamily("tunewatch.test.dotted", "dots", labels=["a.b"])
        dotted.add_metric(["v"], 1.0)
        yield dotted
        # One label dict shared by several samples (as the GPU collector does).
        shared = {"gpu": "0", "uuid": "GPU-1"}
        for name in ("tunewatch_test_shared_first", "tunewatch_test_shared_second"):
            family = GaugeMetricFamily(name, "shared labels", labels=["gpu", "uuid"])
            family.samples.append(Sample(name, shared, 1.0))
            family.samples.append(Sample(name, {}, 2.0))
            yield family


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(Families())
    Counter("tunewatch_test_plain", "a client_python counter (with _created)",
            registry=reg).inc()
    return reg


class Given:
    """A registry of fixed families (a collector that yields what it is given)."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self):
        return iter(self.families)


def test_same_bytes_as_client_python():
    reg = registry()
    assert render_text(reg) == generate_latest(reg)


def test_same_bytes_on_every_rendering():
    """What the renderer remembers between scrapes never changes a later answer."""
    renderer = TextRenderer()
    reg = registry()
    first = renderer.render(reg.collect())
    assert first == generate_latest(reg)
    assert renderer.render(reg.collect()) == first


def test_signed_zero_keeps_its_sign_whichever_comes_first():
    for values in ([0.0, -0.0, 0], [-0.0, 0.0, 0], [0, -0.0, 0.0]):
        family = GaugeMetricFamily("tunewatch_test_zero", "zeros", labels=["i"])
        for i, v in enumerate(values):
            family.add_metric([str(i)], v)
        given = Given([family])
        renderer = TextRenderer()
        for _ in range(2):
            assert renderer.render(given.collect()) == generate_latest(given)


def random_families(rng: random.Random, rounds: int) -> list[list]:
    """`rounds` scrapes of one set of series whose values change between scrapes."""
    alphabet = 'ab"\\\n\u00e9 _.:'
    series = [(f"tunewatch_fuzz_{rng.randrange(6)}",
               {f"l{k}": "".join(rng.choice(alphabet) for _ in range(rng.randrange(5)))
                for k in rng.sample(range(5), rng.randrange(4))})
              for _ in range(200)]
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e6, 1e16, 123456789.0, -1e7]
    scrapes = []
    for _ in range(rounds):
        by_name: dict[str, GaugeMetricFamily] = {}
        for name, labels in series:
            family = by_name.setdefault(name, GaugeMetricFamily(name, f"fuzz {name}"))
            value = rng.choice([rng.choice(specials), rng.uniform(-1e12, 1e12),
                                float(rng.randrange(10**9)), rng.randrange(100)])
            family.samples.append(Sample(name, dict(labels), value))
        scrapes.append(list(by_name.values()))
    return scrapes


def test_random_families_over_many_scrapes_match_client_python():
    rng = random.Random(16)
    renderer = TextRenderer()
    for families in random_families(rng, 20):
        assert renderer.render(families) == generate_latest(Given(families))


def random_row_families(rng: random.Random, rounds: int) -> list[list]:
    """`rounds` scrapes of RowFamily series (gauges and counters, label values that need
    escaping, no labels at all) whose values change between scrapes."""
    alphabet = 'ab"\\\n\u00e9 _.:'
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e6, 1e16, 123456789.0, -1e7]
    shapes = [(f"tunewatch_rows_{i}", rng.choice(["gauge", "counter"]),
               tuple(sorted(rng.sample(["gpu", "uuid", "reason", "a"], rng.randrange(4)))))
              for i in range(6)]
    keys = {name: [tuple("".join(rng.choice(alphabet) for _ in range(rng.randrange(4)))
                         for _ in names) for _ in range(30)]
            for name, _, names in shapes}
    scrapes = []
    for _ in range(rounds):
        families = []
        for name, typ, names in shapes:
            family = RowFamily(name, f"rows {name}", typ, names)
            for key in keys[name][:1] if not names else keys[name]:
                family.add_row(key, rng.choice([rng.choice(specials),
                                                rng.uniform(-1e12, 1e12),
                                                float(rng.randrange(10**9))]))
            families.append(family)
        scrapes.append(families)
    return scrapes


def test_row_families_render_as_their_samples_over_many_scrapes():
    rng = random.Random(22)
    renderer = TextRenderer()
    for families in random_row_families(rng, 20):
        assert renderer.render(families) == generate_latest(Given(families))


def test_row_family_takes_rows_not_samples():
    family = RowFamily("tunewatch_rows_x", "x", "counter", ("gpu",))
    family.add_row(("0",), 2.0)
    assert family.samples == [Sample("tunewatch_rows_x_total", {"gpu": "0"}, 2.0)]
    with pytest.raises(TypeError):
        family.samples = [Sample("tunewatch_rows_x_total", {"gpu": "1"}, 1.0)]


def test_remembered_row_starts_of_a_gone_family_are_forgotten():
    renderer = TextRenderer()
    family = RowFamily("tunewatch_rows_gone", "gone", "gauge", ("gpu",))
    family.add_row(("0",), 1.0)
    renderer.render([family])
    assert any(key[0] == "tunewatch_rows_gone" for key in renderer._row_lines)
    for _ in range(CACHE_FACTOR + 1):
        renderer.render([GaugeMetricFamily("tunewatch_test_other", "other", value=1.0)])
    assert not any(key[0] == "tunewatch_rows_gone" for key in renderer._row_lines)


def test_remembered_texts_stay_bounded():
    """Values that change on every scrape must not grow the renderer without limit: it
    holds at most CACHE_FACTOR renderings' worth (CACHE_FLOOR lines at least) plus one."""
    renderer = TextRenderer()
    lines = 101  # HELP and TYPE count as one entry of `out`, each sample as one
    limit = CACHE_FACTOR * max(lines, CACHE_FLOOR)
    sizes = []
    for scrape in range(3 * limit // 100):
        family = GaugeMetricFamily("tunewatch_test_power_watts", "changes", labels=["gpu"])
        for gpu in range(100):
            family.add_metric([str(gpu)], 300.0 + scrape + gpu / 1000)
        renderer.render([family])
        sizes.append(len(renderer._values))
    assert max(sizes) <= limit + 100
    assert sizes[-1] < max(sizes)  # it was emptied, not only capped by luck
    # A family that is gone is forgotten after CACHE_FACTOR renderings without it.
    assert "tunewatch_test_power_watts" in renderer._lines
    for _ in range(CACHE_FACTOR + 1):
        renderer.render([GaugeMetricFamily("tunewatch_test_other", "other", value=1.0)])
    assert "tunewatch_test_power_watts" not in renderer._lines


def test_recorded_h100_host_matches_client_python():
    """The host exporter's own families, from the recorded H100 readings."""
    snapshot = RecordedReader.from_file(GPU_FIXTURES / "h100-load.json").read()
    given = Given(snapshot_families(snapshot, max_processes=16))
    assert render_text(given) == generate_latest(given)


def test_empty_registry_is_empty():
    assert render_text(CollectorRegistry()) == generate_latest(CollectorRegistry()) == b""


def test_promtool_accepts_it():
    assert promtool_check_metrics(render_text(registry()).decode()) == ""


# --------------------------------------------------------------------------- negotiation


def test_prometheus_header_gets_text_by_default():
    encoder, content_type = negotiate(PROMETHEUS_ACCEPT)
    assert content_type == TEXT_CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert encoder is render_text


@pytest.mark.parametrize("accept", [
    "", "*/*", "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text", "application/json", "text/plain;version=1.0.0",
])
def test_anything_gets_text_with_openmetrics_off(accept: str):
    """client_golang's Negotiate: text for whatever it does not offer, OpenMetrics included."""
    assert negotiate(accept, openmetrics=False)[1] == TEXT_CONTENT_TYPE


@pytest.mark.parametrize(("accept", "expected"), [
    (PROMETHEUS_ACCEPT, OPENMETRICS_CONTENT_TYPE),
    ("application/openmetrics-text", OPENMETRICS_CONTENT_TYPE),
    ("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5",
     TEXT_CONTENT_TYPE),
    ("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.9", TEXT_CONTENT_TYPE),
    ("application/openmetrics-text;version=1.0.0;q=0,text/plain;q=0.1", TEXT_CONTENT_TYPE),
    ("application/openmetrics-text;version=0.0.1", TEXT_CONTENT_TYPE),
    ("*/*;q=0.9,application/openmetrics-text;version=1.0.0;q=0.9", OPENMETRICS_CONTENT_TYPE),
    ("", TEXT_CONTENT_TYPE),
    ("*/*", TEXT_CONTENT_TYPE),
])
def test_openmetrics_on_follows_the_scrapers_preference(accept: str, expected: str):
    encoder, content_type = negotiate(accept, openmetrics=True)
    assert content_type == expected
    assert encoder is (render_text if expected == TEXT_CONTENT_TYPE else openmetrics_latest)


@pytest.mark.parametrize(("header", "accepted"), [
    ("gzip", True), ("identity", False), ("", False), ("deflate, gzip;q=0.5", True),
    ("gzip;q=0", False), ("GZIP", True), ("gzipx", False), ("br,gzip ; q=1.0", True),
])
def test_gzip_accepted(header: str, accepted: bool):
    assert gzip_accepted(header) is accepted


def test_label_sets_with_equal_values_and_other_names_stay_apart():
    """Label texts are remembered by their values; the names must still be told apart."""
    renderer = TextRenderer()
    for _ in range(3):
        family = GaugeMetricFamily("tunewatch_test_pairs", "pairs")
        for labels in ({"a": "1", "b": "2"}, {"b": "1", "a": "2"}, {"c": "1", "d": "2"},
                       {"b": "2", "a": "1"}, {"a": "1", "b": "2", "c": ""}):
            family.samples.append(Sample("tunewatch_test_pairs", labels, 1.0))
        given = Given([family])
        assert renderer.render(given.collect()) == generate_latest(given)


def test_series_that_come_go_move_or_change_labels_between_scrapes():
    """Line starts are remembered by position: whatever moved must still render right."""
    shared = {"gpu": "0", "uuid": "GPU-1"}

    def scrape(rows: list[tuple[str, dict[str, str], float]]) -> Given:
        family = GaugeMetricFamily("tunewatch_test_moving", "moving")
        family.samples.extend(Sample(n, labels, v) for n, labels, v in rows)
        return Given([family])

    name = "tunewatch_test_moving"
    scrapes = [
        [(name, shared, 1.0), (name, {"gpu": "1"}, 2.0)],
        [(name, {"gpu": "2"}, 3.0), (name, shared, 1.0), (name, {"gpu": "1"}, 2.0)],
        [(name, {"gpu": "1"}, 2.0)],
        [(name, {"gpu": "1", "x": "y"}, 2.0), (name + "_created", {}, 5.0), (name, {}, 0.0)],
        [(name, shared, 1.0), (name, {"gpu": "1"}, 2.0)],
    ]
    renderer = TextRenderer()
    for rows in scrapes:
        given = scrape(rows)
        assert renderer.render(given.collect()) == generate_latest(given)
    shared["gpu"] = "9"  # a collector that changes a dict it handed out earlier
    given = scrape(scrapes[0])
    assert renderer.render(given.collect()) == generate_latest(given)
