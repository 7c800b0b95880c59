"""The predictions store: SQLite by default, PostgreSQL by URL, one interface for both.

Why two backends behind one class: SQLite needs nothing set up (a file in the evaluator's
state directory), PostgreSQL is what Grafana reads. The SQL is shared and written with
`%s` placeholders; for SQLite they become `?`. Every value is a bound parameter; the only
statements built from text are fixed strings of this module (column lists, ORDER BY).

Writes are idempotent: a row's key is (run, step, example_key) and a second insert of the
same key does nothing, so a spool flushed twice, or a checkpoint recorded again after a
crash, never duplicates a row.

    store = open_store("", state_dir="var/evaluator")        # SQLite
    store = open_store("postgresql://tunewatch@127.0.0.1:5432/tunewatch", state_dir=...)
    store.migrate(); store.write(rows); store.query(Filters(run="r1"), limit=50)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from evaluators.predictions.schema import COLUMNS, LATEST, MIGRATIONS, VERSION_TABLE

log = logging.getLogger("tunewatch.predictions")

Row = dict[str, Any]
SQLITE_FILE = "predictions.sqlite3"
BOOL_COLUMNS = ("sampled", "exact_match", "normalized_match", "contract_ok")
MIGRATION_LOCK = 7_401_209  # pg_advisory_xact_lock key: one migrator at a time


class StoreError(RuntimeError):
    """The store cannot be reached or used; the message says which store and why."""


@dataclass(frozen=True)
class Filters:
    """What `query` selects; None means no condition. Times are unix seconds."""

    run: str | None = None
    step_min: int | None = None
    step_max: int | None = None
    since: float | None = None
    until: float | None = None
    dataset: str | None = None
    difficulty: str | None = None
    regime: str | None = None
    source: str | None = None
    example_id: str | None = None
    exact_match: bool | None = None
    sampled: bool | None = None

    def where(self, to_time: Callable[[float], Any] = float) -> tuple[str, list[Any]]:
        """A WHERE clause of fixed text and its bound values (times through to_time)."""
        parts: list[str] = []
        values: list[Any] = []
        since = None if self.since is None else to_time(self.since)
        until = None if self.until is None else to_time(self.until)
        for column, op, value in (
            ("run", "=", self.run), ("step", ">=", self.step_min),
            ("step", "<=", self.step_max), ("created_at", ">=", since),
            ("created_at", "<", until), ("dataset", "=", self.dataset),
            ("difficulty", "=", self.difficulty), ("regime", "=", self.regime),
            ("source", "=", self.source), ("example_id", "=", self.example_id),
            ("exact_match", "=", self.exact_match), ("sampled", "=", self.sampled),
        ):
            if value is not None:
                parts.append(f"{column} {op} %s")
                values.append(value)
        return (" WHERE " + " AND ".join(parts)) if parts else "", values


def default_sqlite_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SQLITE_FILE


def redact(url: str) -> str:
    """The URL without a password, for logs and errors."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}"


def open_store(url: str, *, state_dir: str | Path, connect_timeout: float = 5.0) -> Store:
    """The store a URL names: "" (SQLite in state_dir), sqlite:///PATH, postgresql://..."""
    if url.startswith(("postgresql://", "postgres://")):
        return Store("postgresql", url, connect_timeout)
    if url.startswith("sqlite:///"):
        return Store("sqlite", url[len("sqlite:///"):], connect_timeout)
    if url:
        raise StoreError(f"unsupported store URL {redact(url)!r} (sqlite:/// or postgresql://)")
    return Store("sqlite", str(default_sqlite_path(state_dir)), connect_timeout)


class Store:
    """One connection, opened lazily and reopened after a failure; thread-safe."""

    def __init__(self, dialect: str, target: str, connect_timeout: float = 5.0) -> None:
        self.dialect = dialect
        self.target = target
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = threading.RLock()
        self._migrated = False

    @property
    def name(self) -> str:
        return redact(self.target) if self.dialect == "postgresql" else f"sqlite:///{self.target}"

    # ------------------------------------------------------------------ connection

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            path = Path(self.target)
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=self.connect_timeout, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL: no fsync per commit (a crash of the process loses
            # nothing; a power cut may lose the last commits, which the next evaluation of
            # that checkpoint does not rewrite). It keeps the write far below the 2% budget.
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        import psycopg

        return psycopg.connect(self.target, connect_timeout=max(1, round(self.connect_timeout)),
                               autocommit=False)

    def _sql(self, text: str) -> str:
        return text.replace("%s", "?") if self.dialect == "sqlite" else text

    def _errors(self) -> tuple[type[BaseException], ...]:
        if self.dialect == "sqlite":
            return (sqlite3.Error, OSError)
        import psycopg

        return (psycopg.Error, OSError)

    def _run(self, work: Any) -> Any:
        """Run work(conn) in one transaction; any failure closes the connection and raises
        StoreError, so the next call starts on a fresh connection (a restarted server)."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                result = work(self._conn)
                self._conn.commit()
                return result
            except self._errors() as exc:
                self._drop()
                raise StoreError(f"predictions store {self.name}: {exc}".strip()) from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # closing a broken connection may fail too; it is gone anyway
                log.debug("closing the predictions store connection failed", exc_info=True)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _exec(self, conn: Any, text: str, values: Sequence[Any] = ()) -> Any:
        if not values:  # no parameters: psycopg must not read format()'s %I as one
            return conn.execute(self._sql(text))
        return conn.execute(self._sql(text), tuple(values))

    # ------------------------------------------------------------------ schema

    def version(self) -> int:
        """The applied schema version (0: an empty store)."""
        def work(conn: Any) -> int:
            self._exec(conn, VERSION_TABLE[self.dialect])
            row = self._exec(conn, "SELECT max(version) FROM schema_migrations").fetchone()
            return int(row[0] or 0)
        return int(self._run(work))

    def migrate(self, target: int = LATEST) -> list[int]:
        """Apply the missing migrations up to `target`, in one transaction; the versions
        applied. A store newer than this code is refused (it may have columns we drop)."""
        def work(conn: Any) -> list[int]:
            if self.dialect == "postgresql":
                self._exec(conn, "SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            self._exec(conn, VERSION_TABLE[self.dialect])
            row = self._exec(conn, "SELECT max(version) FROM schema_migrations").fetchone()
            current = int(row[0] or 0)
            if current > LATEST:
                raise StoreError(f"predictions store {self.name} has schema version {current}, "
                                 f"newer than this tunewatch ({LATEST}); upgrade tunewatch")
            applied = []
            for m in MIGRATIONS:
                if current < m.version <= target:
                    for statement in m.statements(self.dialect):
                        self._exec(conn, statement)
                    if self.dialect == "sqlite":
                        self._exec(conn, "INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                                   (m.version, m.description, time.time()))
                    else:
                        self._exec(conn, "INSERT INTO schema_migrations (version, description) "
                                   "VALUES (%s, %s)", (m.version, m.description))
                    applied.append(m.version)
            return applied
        applied: list[int] = self._run(work)
        for v in applied:
            log.info("predictions store %s: applied schema migration %d", self.name, v)
        self._migrated = target >= LATEST
        return applied

    def ensure_schema(self) -> None:
        if not self._migrated:
            self.migrate()

    # ------------------------------------------------------------------ rows

    def _to_db(self, row: Row) -> list[Any]:
        values = []
        for column in COLUMNS:
            value: Any = row.get(column)  # a Row's values are the DB driver's (Any)
            if column == "created_at" and self.dialect == "postgresql":
                value = datetime.fromtimestamp(float(value), tz=timezone.utc)
            elif column in BOOL_COLUMNS and value is not None and self.dialect == "sqlite":
                value = int(bool(value))
            values.append(value)
        return values

    def _from_db(self, columns: Sequence[str], record: Sequence[Any]) -> Row:
        row = dict(zip(columns, record, strict=True))
        created = row.get("created_at")
        if isinstance(created, datetime):
            row["created_at"] = created.timestamp()
        for column in BOOL_COLUMNS:
            if column in row and row[column] is not None:
                row[column] = bool(row[column])
        return row

    def write(self, rows: Sequence[Row]) -> int:
        """Insert rows; an existing (run, step, example_key) is left as it is. The number of
        rows that were new."""
        if not rows:
            return 0
        self.ensure_schema()
        insert = (f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES "
                  f"({', '.join(['%s'] * len(COLUMNS))}) "
                  "ON CONFLICT (run, step, example_key) DO NOTHING")

        def work(conn: Any) -> int:
            new = 0
            for row in rows:
                cur = self._exec(conn, insert, self._to_db(row))
                new += max(cur.rowcount, 0)
            return new
        return int(self._run(work))

    def _select(self, text: str, values: Sequence[Any]) -> list[Row]:
        def work(conn: Any) -> list[Row]:
            cur = self._exec(conn, text, values)
            names = [d[0] for d in cur.description]
            return [self._from_db(names, r) for r in cur.fetchall()]
        self.ensure_schema()
        return list(self._run(work))

    def _time(self, seconds: float) -> Any:
        return datetime.fromtimestamp(seconds, tz=timezone.utc) if self.dialect == "postgresql" \
            else seconds

    def _time_values(self, filters: Filters) -> tuple[str, list[Any]]:
        return filters.where(self._time)

    def query(self, filters: Filters, *, limit: int | None = None, offset: int = 0,
              newest_first: bool = True) -> list[Row]:
        """Rows matching the filters, newest (highest step) first, one page."""
        where, values = self._time_values(filters)
        order = "DESC" if newest_first else "ASC"
        text = (f"SELECT id, {', '.join(COLUMNS)} FROM predictions{where} "
                f"ORDER BY step {order}, run, example_id, id")
        if limit is not None:
            text += " LIMIT %s OFFSET %s"
            values = [*values, limit, offset]
        return self._select(text, values)

    def count(self, filters: Filters) -> int:
        where, values = self._time_values(filters)
        rows = self._select(f"SELECT count(*) AS n FROM predictions{where}", values)
        return int(rows[0]["n"])

    def iter_all(self, filters: Filters, page: int = 1000) -> Iterator[Row]:
        """Every matching row, oldest step first, a page at a time (exports)."""
        offset = 0
        while True:
            rows = self.query(filters, limit=page, offset=offset, newest_first=False)
            yield from rows
            if len(rows) < page:
                return
            offset += page

    def recent_matches(self, run: str | None, n: int) -> list[bool]:
        """Exact match of the latest n predictions of the fixed sample (newest first)."""
        where, values = self._time_values(Filters(run=run, sampled=True))
        rows = self._select(f"SELECT exact_match FROM predictions{where} "
                            "ORDER BY step DESC, id DESC LIMIT %s", [*values, n])
        return [bool(r["exact_match"]) for r in rows]

    def delete_older(self, cutoff: float) -> int:
        """Delete rows created before `cutoff` (unix seconds); how many."""
        value = self._time(cutoff)
        self.ensure_schema()
        return int(self._run(lambda conn: max(self._exec(
            conn, "DELETE FROM predictions WHERE created_at < %s", (value,)).rowcount, 0)))

    def older_than(self, cutoff: float) -> Iterable[Row]:
        return self.iter_all(Filters(until=cutoff))

    # ------------------------------------------------------------------ PostgreSQL roles

    def grant_read_only(self, role: str, password: str | None) -> None:
        """Create (or update) a login role that can only SELECT the predictions (Grafana's).

        Role names and passwords cannot be parameters of CREATE ROLE, so they travel as
        bound parameters of set_config() and a server-side format(%I, %L) quotes them.
        """
        if self.dialect != "postgresql":
            raise StoreError("a read-only role needs a PostgreSQL store")
        self.ensure_schema()

        def work(conn: Any) -> None:
            self._exec(conn, "SELECT set_config('tunewatch.role', %s, true), "
                       "set_config('tunewatch.password', %s, true)", (role, password or ""))
            self._exec(conn, _GRANT_READ_ONLY)
        self._run(work)
        log.info("predictions store %s: role %s may read the predictions", self.name, role)


_GRANT_READ_ONLY = """
DO $$
DECLARE
  r text := current_setting('tunewatch.role');
  p text := current_setting('tunewatch.password');
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
    EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', r);
  END IF;
  IF p <> '' THEN
    EXECUTE format('ALTER ROLE %I PASSWORD %L', r, p);
  END IF;
  EXECUTE format('ALTER ROLE %I SET default_transaction_read_only = on', r);
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), r);
  EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', r);
  EXECUTE format('GRANT SELECT ON predictions, schema_migrations TO %I', r);
END
$$
"""
