"""Predictions dashboard: the texts the evaluator keeps per checkpoint, read from PostgreSQL.

Why PostgreSQL and not Prometheus: prompts and answers are text (docs/predictions.md). The
panels query the `predictions` table through the `datasource` variable (type
grafana-postgresql-datasource, the provisioned `tunewatch-postgres`, which logs in as the
read-only role). Grafana cannot bind parameters, so variables are interpolated as SQL
strings with `:sqlstring` (quotes escaped) and the role can only read.

Three parts, as issue 9 asks: the latest preview (prompt, golden, answer, match), the
history with the CLI's filters (run, steps, time, dataset, difficulty, regime, source,
pattern, prompt-length bucket, match), and one example followed across checkpoints, with
where its answer changed (seed 002's diff across epochs): `lag()` over the example's
checkpoints, as `tunewatch predictions follow` marks it. The Evaluation dashboard's
pattern x length cells link here with `pattern` and `length_bucket` set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard as dm

from .common import (
    Layout,
    new_dashboard,
    runbook_link,
    stat_panel,
    table_panel,
    thresholds,
    ts,
)

POSTGRES_UID = "tunewatch-postgres"
PG_TYPE = "grafana-postgresql-datasource"
PG_DS = dm.DataSourceRef(type_val=PG_TYPE, uid="${datasource}")

RUN = "run = ${run:sqlstring}"
# The length bucket as the evaluator labels it (`0-50`, `200+`; evaluator.length_buckets):
# its low and high edges read from the text, so any configured edges work; `any` is all.
# substring() gives NULL (never an error) for text without digits, so `any` plans safely.
BUCKET = "${length_bucket:sqlstring}"
LENGTH_FILTER = (f"({BUCKET} = 'any' OR (prompt_tokens >= coalesce(substring({BUCKET} "
                 f"from '^([0-9]+)')::int, 0) AND (substring({BUCKET} from '-([0-9]+)') IS "
                 f"NULL OR prompt_tokens < substring({BUCKET} from '-([0-9]+)')::int)))")
FILTERS = (f"{RUN} AND $__timeFilter(created_at)"
           " AND dataset IN (${dataset:sqlstring}) AND difficulty IN (${difficulty:sqlstring})"
           " AND regime IN (${regime:sqlstring}) AND source IN (${source:sqlstring})"
           " AND pattern IN (${pattern:sqlstring})"
           " AND step BETWEEN ${step_from:sqlstring}::int AND ${step_to:sqlstring}::int"
           " AND (${match:sqlstring} = 'any' OR exact_match = (${match:sqlstring} = 'yes'))"
           f" AND {LENGTH_FILTER}")
LATEST_STEP = f"(SELECT max(step) FROM predictions WHERE {RUN})"
MATCH_TEXT = "CASE WHEN exact_match THEN 'yes' WHEN normalized_match THEN 'normalized' " \
             "ELSE 'no' END AS match"
# One example's checkpoints in order (per run): the window `lag()` compares along.
ALONG = "(PARTITION BY run, example_key ORDER BY step)"
CHANGE_TEXT = (f"CASE WHEN lag(answer) OVER {ALONG} IS NULL THEN 'first' "
               f"WHEN lag(answer) OVER {ALONG} = answer THEN 'same' "
               f"WHEN lag(exact_match) OVER {ALONG} = exact_match THEN 'changed' "
               "WHEN exact_match THEN 'changed fixed' ELSE 'changed broken' END AS change")
# Seed 001's preview statistics: exact match over the latest N predictions of the sample.
WINDOWS = (20, 50, 100)


@dataclass
class SqlQuery(cogvariants.Dataquery):
    """A raw SQL target of Grafana's PostgreSQL datasource (the SDK has no builder)."""

    ref_id: str
    raw_sql: str
    fmt: str

    def to_json(self) -> dict[str, Any]:
        return {"refId": self.ref_id, "datasource": {"type": PG_TYPE, "uid": "${datasource}"},
                "rawSql": self.raw_sql, "format": self.fmt, "rawQuery": True,
                "editorMode": "code"}


class Sql(cogbuilder.Builder[SqlQuery]):
    """Builder for SqlQuery, so panels take it like any other target."""

    def __init__(self, raw_sql: str, ref: str = "A", fmt: str = "table") -> None:
        self._query = SqlQuery(ref, " ".join(raw_sql.split()), fmt)

    def build(self) -> SqlQuery:
        return self._query


def _pg(panel: Any) -> Any:
    return panel.datasource(PG_DS)


def _variable(name: str, label: str, column: str) -> db.QueryVariable:
    """Distinct values of a column in the chosen run; multi-select, All by default."""
    query = f"SELECT DISTINCT {column} FROM predictions WHERE {RUN} ORDER BY 1"
    return (db.QueryVariable(name).label(label).query(query).datasource(PG_DS)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
            .current(dm.VariableOption(selected=True, text="All", value="$__all")))


def variables(d: db.Dashboard) -> None:
    d.with_variable(
        db.DatasourceVariable("datasource").label("Data source").type(PG_TYPE)
        .current(dm.VariableOption(selected=True, text="PostgreSQL", value=POSTGRES_UID)))
    d.with_variable(
        db.QueryVariable("run").label("Run").datasource(PG_DS)
        .query("SELECT DISTINCT run FROM predictions ORDER BY 1")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC))
    for name, label in (("dataset", "Dataset"), ("difficulty", "Difficulty"),
                        ("regime", "Regime"), ("source", "Source"), ("pattern", "Pattern")):
        d.with_variable(_variable(name, label, name))
    d.with_variable(db.CustomVariable("match").label("Match").values("any,yes,no")
                    .current(dm.VariableOption(selected=True, text="any", value="any")))
    for name, label, value in (("step_from", "From step", "0"),
                               ("step_to", "To step", "1000000000"),
                               ("length_bucket", "Prompt length", "any")):
        d.with_variable(db.TextBoxVariable(name).label(label).default_value(value)
                        .current(dm.VariableOption(selected=True, text=value, value=value)))
    d.with_variable(
        db.QueryVariable("example").label("Example").datasource(PG_DS)
        .query(f"SELECT DISTINCT example_id FROM predictions WHERE {RUN} AND sampled "
               "ORDER BY 1")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC))


def build() -> db.Dashboard:
    """The Predictions dashboard."""
    d = new_dashboard("predictions", "tunewatch / Predictions",
                      "What the model answered on a fixed sample of examples at every "
                      "evaluated checkpoint: the latest preview, the filtered history and "
                      "one example followed across checkpoints.")
    variables(d)
    lay = Layout(d)
    exact = thresholds(0.8, 0.5, higher_is_worse=False)
    text = thresholds(1e12, 1e13)

    lay.row("Latest checkpoint")
    lay.add(_pg(stat_panel(
        "Sample exact match", "Exact match over the fixed sample at the latest recorded "
        "checkpoint of the run (a small sample: follow the evaluation dashboard for the "
        "suite-wide figure).", "percentunit",
        [Sql(f"SELECT avg(CASE WHEN exact_match THEN 1.0 ELSE 0.0 END) AS exact_match "
             f"FROM predictions WHERE {RUN} AND sampled AND step = {LATEST_STEP}")],
        exact)), 4, 8)
    lay.add(_pg(stat_panel(
        "Latest step", "Step of the latest checkpoint whose predictions were recorded.",
        "none", [Sql(f"SELECT {LATEST_STEP} AS step")], text, light=False)), 4, 8)
    lay.add(_pg(table_panel(
        "Latest preview", "The fixed sample at the latest recorded checkpoint: prompt, "
        "golden answer, the model's answer, whether it matched, its contract, "
        "cross-entropy, tokens and generation time.", "string",
        [Sql(f"SELECT example_id, difficulty, prompt, golden, answer, {MATCH_TEXT}, "
             "failure_mode, contract_ok, cross_entropy, prompt_tokens, generated_tokens, "
             f"generation_seconds FROM predictions WHERE {RUN} AND sampled AND step = "
             f"{LATEST_STEP} ORDER BY example_id")], text, exclude=[])), 16, 8)
    lay.add(_pg(stat_panel(
        "Sample exact match, last 20/50/100", "Exact match over the latest 20, 50 and 100 "
        "recorded predictions of the fixed sample (seed 001's preview statistics; "
        "`tunewatch predictions accuracy`).", "percentunit",
        [Sql("SELECT avg(CASE WHEN exact_match THEN 1.0 ELSE 0.0 END) AS \"last "
             f"{n}\" FROM (SELECT exact_match FROM predictions WHERE {RUN} AND sampled "
             f"ORDER BY step DESC, id DESC LIMIT {n}) AS latest", ref)
         for n, ref in zip(WINDOWS, "ABC", strict=True)], exact)), 8, 5)
    lay.add(_pg(table_panel(
        "Answers changed at the latest checkpoint", "Examples of the fixed sample whose "
        "answer at the latest recorded checkpoint differs from their previous recorded "
        "one, with the match now and whether it was fixed or broken.", "string",
        [Sql(f"SELECT example_id, difficulty, previous_step, previous_answer, answer, "
             f"{MATCH_TEXT}, change FROM (SELECT *, lag(step) OVER {ALONG} AS "
             f"previous_step, lag(answer) OVER {ALONG} AS previous_answer, {CHANGE_TEXT} "
             f"FROM predictions WHERE {RUN} AND sampled) AS along WHERE step = {LATEST_STEP} "
             "AND change LIKE 'changed%' ORDER BY example_id")], text, exclude=[])), 16, 5)

    lay.row("History")
    lay.add(_pg(ts(
        "Sample exact match per checkpoint", "Exact match of the fixed sample at each "
        "recorded checkpoint (x: when it was recorded), with the history filters applied.",
        "percentunit",
        [Sql(f"SELECT max(created_at) AS time, avg(CASE WHEN exact_match THEN 1.0 ELSE 0.0 "
             f"END) AS exact_match FROM predictions WHERE {FILTERS} AND sampled "
             "GROUP BY step ORDER BY 1", fmt="time_series")],
        exact, min_val=0, max_val=1)), 12, 7)
    lay.add(_pg(ts(
        "Changed answers per checkpoint", "Examples of the fixed sample (history filters "
        "applied) whose answer differs from their previous recorded checkpoint, and of "
        "those, how many became right (fixed) or wrong (broken).", "short",
        [Sql("SELECT max(created_at) AS time, count(*) FILTER (WHERE answer <> previous) AS "
             "changed, count(*) FILTER (WHERE exact_match AND NOT was_right) AS fixed, "
             "count(*) FILTER (WHERE was_right AND NOT exact_match) AS broken FROM "
             f"(SELECT *, lag(answer) OVER {ALONG} AS previous, lag(exact_match) OVER "
             f"{ALONG} AS was_right FROM predictions WHERE {RUN} AND sampled) AS along "
             f"WHERE {FILTERS} GROUP BY step ORDER BY 1", fmt="time_series")],
        thresholds(1e12, 1e13), min_val=0)), 12, 7)
    lay.add(_pg(table_panel(
        "History", "Recorded predictions matching the filters above (run, steps, time "
        "range, dataset, difficulty, regime, source, match), newest first, at most 500 "
        "rows; `tunewatch predictions list` pages through all of them.", "string",
        [Sql(f"SELECT created_at AS time, step, example_id, dataset, difficulty, regime, "
             f"source, {MATCH_TEXT}, failure_mode, answer, golden, cross_entropy, pattern, "
             f"prompt_tokens FROM predictions WHERE {FILTERS} ORDER BY step DESC, example_id "
             "LIMIT 500")],
        text, exclude=[]).links([runbook_link("evalregression", "Runbook: EvalRegression")])),
        24, 10)

    lay.row("One example across checkpoints")
    lay.add(_pg(table_panel(
        "Example ${example}", "The chosen example (variable Example) at every recorded "
        "checkpoint of the run, oldest first: how its answer changed with training. "
        "`change` marks an answer different from the checkpoint before (and a match that "
        "flipped: fixed, broken), as `tunewatch predictions follow` does.",
        "string",
        [Sql(f"SELECT step, epoch, checkpoint, answer, {MATCH_TEXT}, {CHANGE_TEXT}, "
             f"failure_mode, cross_entropy, generated_tokens FROM predictions WHERE {RUN} "
             "AND example_id = ${example:sqlstring} ORDER BY step")], text, exclude=[])
        .override_by_name("change", [
            dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
            dm.DynamicConfigValue(id_val="mappings", value=[{
                "type": "regex", "options": {"pattern": "changed.*", "result": {
                    "color": "orange", "index": 0}}}])])),
        16, 9)
    lay.add(_pg(ts(
        "Example cross-entropy", "Teacher-forced cross-entropy of the chosen example's "
        "golden answer at each recorded checkpoint (nats per token).", "none",
        [Sql("SELECT created_at AS time, cross_entropy FROM predictions WHERE "
             f"{RUN} AND example_id = ${{example:sqlstring}} AND $__timeFilter(created_at) "
             "ORDER BY 1", fmt="time_series")], thresholds(2.0, 4.0))), 8, 9)
    lay.add(_pg(table_panel(
        "Recorded checkpoints", "Every checkpoint with recorded predictions (history "
        "filters applied): its epoch, how many rows and their exact match (seed 002's "
        "epochs list).", "none",
        [Sql("SELECT step, max(epoch) AS epoch, max(checkpoint) AS checkpoint, count(*) AS "
             "predictions, avg(CASE WHEN exact_match THEN 1.0 ELSE 0.0 END) AS exact_match "
             f"FROM predictions WHERE {FILTERS} GROUP BY step ORDER BY step DESC")],
        text, exclude=[])), 24, 7)
    return d
