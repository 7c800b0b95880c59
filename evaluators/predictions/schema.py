"""The predictions schema, as numbered migrations applied in order, once.

Why migrations rather than CREATE IF NOT EXISTS: a store outlives the code that wrote it
(a PostgreSQL database shared with Grafana, a SQLite file in the state directory), so a
newer tunewatch must bring an older store forward step by step and say which version it
found. `schema_migrations` records each applied version; a store newer than the code is
refused rather than written to.

Each migration is a list of statements per dialect ("sqlite", "postgresql"); the two differ
only in types (timestamptz vs unix seconds, BIGSERIAL vs INTEGER PRIMARY KEY).
"""

from __future__ import annotations

from dataclasses import dataclass

COLUMNS = (
    "run", "step", "epoch", "checkpoint", "example_key", "example_id", "dataset",
    "difficulty", "regime", "source", "pattern", "sampled", "prompt", "golden", "answer",
    "exact_match", "normalized_match", "failure_mode", "contract_ok", "cross_entropy",
    "prompt_tokens", "golden_tokens", "generated_tokens", "generation_seconds", "created_at",
)
"""Columns written for each row, in order (the `id` column is the store's own)."""

FILTER_INDEXES = (
    ("predictions_run_step", "run, step"),
    ("predictions_created_at", "created_at"),
    ("predictions_run_example", "run, example_id, step"),
    ("predictions_dataset", "dataset"),
    ("predictions_difficulty", "difficulty"),
    ("predictions_regime", "regime"),
    ("predictions_source", "source"),
)


def _table(dialect: str) -> str:
    pg = dialect == "postgresql"
    ident = "BIGSERIAL PRIMARY KEY" if pg else "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "DOUBLE PRECISION" if pg else "REAL"
    boolean = "BOOLEAN" if pg else "INTEGER"
    created = "TIMESTAMPTZ" if pg else "REAL"
    return f"""CREATE TABLE predictions (
        id {ident},
        run TEXT NOT NULL,
        step INTEGER NOT NULL,
        epoch {real},
        checkpoint TEXT NOT NULL,
        example_key TEXT NOT NULL,
        example_id TEXT NOT NULL,
        dataset TEXT NOT NULL,
        difficulty TEXT NOT NULL,
        regime TEXT NOT NULL,
        source TEXT NOT NULL,
        pattern TEXT NOT NULL,
        sampled {boolean} NOT NULL,
        prompt TEXT NOT NULL,
        golden TEXT NOT NULL,
        answer TEXT NOT NULL,
        exact_match {boolean} NOT NULL,
        normalized_match {boolean} NOT NULL,
        failure_mode TEXT,
        contract_ok {boolean},
        cross_entropy {real},
        prompt_tokens INTEGER NOT NULL,
        golden_tokens INTEGER NOT NULL,
        generated_tokens INTEGER NOT NULL,
        generation_seconds {real},
        created_at {created} NOT NULL,
        CONSTRAINT predictions_row_key UNIQUE (run, step, example_key)
    )"""


@dataclass(frozen=True)
class Migration:
    """One schema version: what it does (for the log) and its statements per dialect."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.postgresql if dialect == "postgresql" else self.sqlite


def _indexes() -> tuple[str, ...]:
    return tuple(f"CREATE INDEX {name} ON predictions ({cols})" for name, cols in FILTER_INDEXES)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "predictions table, one row per (run, step, example)",
              (_table("sqlite"),), (_table("postgresql"),)),
    Migration(2, "indexes for the CLI's and the dashboard's filters", _indexes(), _indexes()),
)
LATEST = MIGRATIONS[-1].version

VERSION_TABLE = {
    "sqlite": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
              "description TEXT NOT NULL, applied_at REAL NOT NULL)",
    "postgresql": "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                  "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
}
