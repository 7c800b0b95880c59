"""Shared building blocks: datasource reference, targets, thresholds, layout, links.

Why one module: every panel must carry a unit, a description, the `datasource` variable
and green/yellow/red thresholds (STYLE, dashboards as code); putting those in the only
constructors the dashboards use makes a panel without them impossible to write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import (
    barchart,
    bargauge,
    heatmap,
    stat,
    table,
    timeseries,
    xychart,
)
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import xychart as xm

# What an efficiency panel says where the recording rules give nothing: a run whose
# processes hold no GPU memory (a CPU run such as `make up`'s demo on a host without a GPU,
# or no NVML) has no MFU and no energy per token, which is not a 0.
NO_GPU_OF_RUN = "no GPU holds memory of this run"

# Datasource uid as provisioned (grafana/provisioning/datasources/tunewatch.yml); panels
# never name it directly but go through the `datasource` variable.
PROMETHEUS_UID = "tunewatch-prometheus"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The runbook's address: the rules source's runbook_base_url (prometheus/templates/
# config.yml), so that the dashboards' links and every alert's runbook_url agree.
RULES_SOURCE = Path(__file__).resolve().parents[2] / "prometheus" / "templates" / "config.yml"
RUNBOOK = str(yaml.safe_load(RULES_SOURCE.read_text())["runbook_base_url"])
DASHBOARD_TAG = "tunewatch"
UIDS = {
    "overview": "tunewatch-overview",
    "training": "tunewatch-training",
    "hardware": "tunewatch-hardware",
    "evaluation": "tunewatch-evaluation",
    "predictions": "tunewatch-predictions",
}
# Grafana keeps the time range in a link that carries this (and the run as var-run).
TIME_RANGE = "${__url_time_range}"
GREEN, YELLOW, RED = "green", "yellow", "red"

PanelBuilder = Any  # the SDK's panel builders share no public base type


def target(expr: str, legend: str = "__auto", ref: str = "A", instant: bool = False,
           table_format: bool = False) -> prom.Dataquery:
    """A Prometheus query on the `datasource` variable (never a fixed uid)."""
    query = prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DS)
    query = query.instant() if instant else query.range()
    if table_format:
        query = query.format(dm_format_table())
    return query


def dm_format_table() -> Any:
    """The `table` query format (instant tables for the ranking and reliability panels)."""
    from grafana_foundation_sdk.models import prometheus as pm

    return pm.PromQueryFormat.TABLE


def thresholds(yellow: float, red: float, higher_is_worse: bool = True,
               percentage: bool = False) -> db.ThresholdsConfig:
    """Green/yellow/red steps; reversed (red first) when low values are the bad ones."""
    mode = dm.ThresholdsMode.PERCENTAGE if percentage else dm.ThresholdsMode.ABSOLUTE
    if higher_is_worse:
        steps = [dm.Threshold(value=None, color=GREEN), dm.Threshold(value=yellow, color=YELLOW),
                 dm.Threshold(value=red, color=RED)]
    else:
        steps = [dm.Threshold(value=None, color=RED), dm.Threshold(value=red, color=YELLOW),
                 dm.Threshold(value=yellow, color=GREEN)]
    return db.ThresholdsConfig().mode(mode).steps(steps)


def runbook_link(anchor: str, title: str = "Runbook") -> db.DashboardLink:
    """A panel link to one section of docs/runbook.md (the alert of the same name)."""
    return (db.DashboardLink(title).type(dm.DashboardLinkType.LINK)
            .url(f"{RUNBOOK}#{anchor}").target_blank(True))


def dashboard_url(key: str, **variables: str) -> str:
    """The path of a tunewatch dashboard with the chosen run, the time range and
    `variables` (name -> value, Grafana interpolates `${...}` in them)."""
    query = "&".join(["var-run=${run}", *(f"var-{k}={v}" for k, v in variables.items()),
                      TIME_RANGE])
    return f"/d/{UIDS[key]}?{query}"


def to_dashboard(key: str, title: str) -> db.DashboardLink:
    """A panel link to another tunewatch dashboard, same run and time range."""
    return db.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(dashboard_url(key))


def dashboard_links() -> list[db.DashboardLink]:
    """Links in every dashboard's header: the other tunewatch dashboards and the runbook."""
    return [
        db.DashboardLink("tunewatch").type(dm.DashboardLinkType.DASHBOARDS)
        .tags([DASHBOARD_TAG]).as_dropdown(False).include_vars(True).keep_time(True),
        db.DashboardLink("Runbook").type(dm.DashboardLinkType.LINK).url(RUNBOOK)
        .icon("doc").target_blank(True),
    ]


def _common(panel: PanelBuilder, title: str, description: str, unit: str,
            thr: db.ThresholdsConfig, targets: list[prom.Dataquery],
            links: list[db.DashboardLink] | None) -> PanelBuilder:
    panel = (panel.title(title).description(description).unit(unit).datasource(DS)
             .thresholds(thr).targets(targets))
    if links:
        panel = panel.links(links)
    return panel


def ts(title: str, description: str, unit: str, targets: list[prom.Dataquery],
       thr: db.ThresholdsConfig, links: list[db.DashboardLink] | None = None,
       min_val: float | None = None, max_val: float | None = None,
       show_thresholds: bool = False) -> timeseries.Panel:
    """A time series panel; thresholds drawn as dashed lines when they mean something."""
    panel = _common(timeseries.Panel(), title, description, unit, thr, targets, links)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    if show_thresholds:
        panel = panel.thresholds_style(
            db_thresholds_style(cm.GraphThresholdsStyleMode.DASHED))
    return panel


def db_thresholds_style(mode: cm.GraphThresholdsStyleMode) -> Any:
    """Builder for how a time series draws its thresholds."""
    from grafana_foundation_sdk.builders import common as cb

    return cb.GraphThresholdsStyleConfig().mode(mode)


def stat_panel(title: str, description: str, unit: str, targets: list[prom.Dataquery],
               thr: db.ThresholdsConfig, links: list[db.DashboardLink] | None = None,
               text_mode: cm.BigValueTextMode = cm.BigValueTextMode.AUTO,
               mappings: list[dm.ValueMapping] | None = None,
               light: bool = True) -> stat.Panel:
    """A stat of the last value; a light (background in the threshold colour) unless the
    value is a plain fact (a step number, a name), where colour would suggest a judgement."""
    color = cm.BigValueColorMode.BACKGROUND if light else cm.BigValueColorMode.NONE
    panel = (_common(stat.Panel(), title, description, unit, thr, targets, links)
             .color_mode(color).graph_mode(cm.BigValueGraphMode.NONE)
             .text_mode(text_mode).reduce_options(_last_value()))
    if mappings:
        panel = panel.mappings(mappings)
    return panel


def _last_value() -> Any:
    """Reduce a series to its last non-null value (what a light should show)."""
    from grafana_foundation_sdk.builders import common as cb

    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def bar_gauge(title: str, description: str, unit: str, targets: list[prom.Dataquery],
              thr: db.ThresholdsConfig, min_val: float = 0.0,
              max_val: float | None = None) -> bargauge.Panel:
    """A horizontal bar gauge (progress bars, queue depths)."""
    panel = (_common(bargauge.Panel(), title, description, unit, thr, targets, None)
             .orientation(cm.VizOrientation.HORIZONTAL)
             .display_mode(cm.BarGaugeDisplayMode.GRADIENT).min(min_val)
             .reduce_options(_last_value()))
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def table_panel(title: str, description: str, unit: str, targets: list[prom.Dataquery],
                thr: db.ThresholdsConfig, exclude: list[str],
                sort_by: str | None = None) -> table.Panel:
    """A table of instant queries merged on their labels."""
    panel = _common(table.Panel(), title, description, unit, thr, targets, None)
    panel = panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    panel = panel.with_transformation(dm.DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": dict.fromkeys(exclude, True)}))
    if sort_by:
        from grafana_foundation_sdk.builders import common as cb

        panel = panel.sort_by([cb.TableSortByFieldState().display_name(sort_by)])
    return panel


def bar_chart(title: str, description: str, unit: str, targets: list[prom.Dataquery],
              thr: db.ThresholdsConfig, x_field: str) -> barchart.Panel:
    """A bar chart of instant table queries merged on `x_field`."""
    panel = _common(barchart.Panel(), title, description, unit, thr, targets, None)
    return (panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
            .x_field(x_field).min(0).max(1))


def xy_chart(title: str, description: str, unit: str, targets: list[prom.Dataquery],
             thr: db.ThresholdsConfig, x: str, y: str, color: str,
             links: list[db.DashboardLink] | None = None) -> xychart.Panel:
    """Points of field `y` against field `x`, coloured by field `color` (fields named by
    their legends): the queries' series joined on time, one point per instant."""
    def field(name: str) -> xychart.MatcherConfig:
        return xychart.MatcherConfig().id("byName").options(name)

    joined = xychart.MatcherConfig().id("byIndex").options(0)  # the one joined frame
    series = (xychart.XYSeriesConfig()
              .frame(xychart.XychartXYSeriesConfigFrame().matcher(joined))
              .x(xychart.XychartXYSeriesConfigX().matcher(field(x)))
              .y(xychart.XychartXYSeriesConfigY().matcher(field(y)))
              .color(xychart.XychartXYSeriesConfigColor().matcher(field(color))))
    panel = _common(xychart.Panel(), title, description, unit, thr, targets, links)
    return (panel.with_transformation(dm.DataTransformerConfig(
                id_val="joinByField", options={"byField": "Time", "mode": "outer"}))
            .mapping(xm.SeriesMapping.MANUAL).series([series]).show(xm.XYShowMode.POINTS))


def matrix_table(title: str, description: str, unit: str, query: prom.Dataquery,
                 thr: db.ThresholdsConfig, rows: str, columns: str,
                 cell_link: tuple[str, str] | None = None) -> table.Panel:
    """An instant query as a matrix: one row per value of label `rows`, one column per
    value of label `columns`, each cell coloured by the thresholds. cell_link: (title, url)
    of a data link on every cell (not the row names); `${__data.fields[0]}` is the row's
    label value and `${__field.name}` the column's."""
    panel = _common(table.Panel(), title, description, unit, thr, [query], None)
    panel = panel.with_transformation(dm.DataTransformerConfig(
        id_val="groupingToMatrix",
        options={"rowField": rows, "columnField": columns, "valueField": "Value"}))
    panel = panel.cell_options(cm.TableColoredBackgroundCellOptions())
    if cell_link:
        link = {"title": cell_link[0], "url": cell_link[1], "targetBlank": False}
        # Column names are label values; the first column holds the row names.
        panel = panel.override_by_regexp(f"^(?!{rows}).*", [
            dm.DynamicConfigValue(id_val="links", value=[link])])
    return panel


def heatmap_panel(title: str, description: str, unit: str, targets: list[prom.Dataquery],
                  thr: db.ThresholdsConfig) -> heatmap.Panel:
    """A heatmap whose rows are the query's series (one row per label value)."""
    panel = _common(heatmap.Panel(), title, description, unit, thr, targets, None)
    # filter_values: Grafana hides cells <= 1e-9 by default, i.e. an exact match of 0.
    return (panel.calculate(False)
            .color(heatmap.HeatmapColorOptions().mode(_heatmap_scheme()).scheme("RdYlGn")
                   .min(0).max(1).steps(64).exponent(0.5))
            .filter_values(heatmap.FilterValueRange().le(-1)))


def _heatmap_scheme() -> Any:
    from grafana_foundation_sdk.models import heatmap as hm

    return hm.HeatmapColorMode.SCHEME


@dataclass
class Layout:
    """Places panels left to right in rows of 24 columns; no two panels can overlap.

    Why: gridPos by hand is where generated dashboards break (overlaps are silently
    re-flowed by Grafana and look different from what was reviewed).
    """

    dashboard: db.Dashboard
    y: int = 0
    x: int = 0
    row_height: int = 0
    next_id: int = 1
    ids: list[int] = field(default_factory=list)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        """A row header across the whole width."""
        if self.x:
            self._newline()
        self.dashboard.with_row(db.Row(title).id(self.next_id).grid_pos(
            dm.GridPos(h=1, w=24, x=0, y=self.y)))
        self.next_id += 1
        self.y += 1

    def add(self, panel: PanelBuilder, w: int, h: int, copies: int = 1) -> None:
        """Add a panel of w x h, on a new line when it does not fit on this one.

        copies: how many side-by-side copies Grafana makes of a panel repeated
        horizontally; they take copies * w columns.
        """
        if self.x + w * copies > 24:
            self._newline()
        panel.id(self.next_id).grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y))
        self.next_id += 1
        self.dashboard.with_panel(panel)
        self.x += w * copies
        self.row_height = max(self.row_height, h)


def new_dashboard(key: str, title: str, description: str) -> db.Dashboard:
    """A dashboard with tunewatch's defaults: stable uid, tags, links, refresh."""
    return (db.Dashboard(title).uid(UIDS[key]).description(description)
            .tags([DASHBOARD_TAG]).time("now-6h", "now").refresh("30s")
            .timezone("browser").tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .links(dashboard_links()).readonly())


def datasource_variable() -> db.DatasourceVariable:
    """The `datasource` variable (type prometheus, defaulting to the provisioned one)."""
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus")
            .current(dm.VariableOption(selected=True, text="Prometheus",
                                       value=PROMETHEUS_UID)))


def query_variable(name: str, label: str, query: str, multi: bool = False,
                   include_all: bool = False) -> db.QueryVariable:
    """A variable filled by label_values() on the `datasource` variable."""
    var = (db.QueryVariable(name).label(label).query(query).datasource(DS)
           .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))
    if multi:
        var = var.multi(True)
    if include_all:
        var = var.include_all(True).all_value(".*").current(
            dm.VariableOption(selected=True, text="All", value="$__all"))
    return var


def to_json(dashboard: db.Dashboard) -> str:
    """Stable JSON text (sorted keys, two-space indent, final newline)."""
    text = JSONEncoder(sort_keys=True, indent=2).encode(dashboard.build())
    return json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
