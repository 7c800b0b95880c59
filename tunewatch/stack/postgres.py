"""The stack's PostgreSQL: the predictions store that Grafana's Predictions dashboard reads.

Why it exists: with Grafana on PATH, `make up` shows every dashboard, and the Predictions
one reads PostgreSQL, not Prometheus. The stack then starts a cluster of its own, points
its evaluator at it (`predictions.store_url` and `PGPASSFILE` in the evaluator's
environment) and gives Grafana the read-only role that `tunewatch predictions init-db`
gives it in compose.

Why a scratch cluster, made at every start and removed at the end: the demo starts over at
every `make up`, and rows are keyed by (run, step, example), so an earlier demo's rows would
stand in for the new run's. It lives in a temporary directory rather than under `var/`
because PostgreSQL refuses to run as root: as root the stack runs it as the `postgres`
account (as tests/services.py does), which could not reach `var/` under a private home.

Passwords (scram-sha-256, even on 127.0.0.1, since the owner is a database superuser) are
kept under `var/postgres/`, mode 0600: the owner's, its pgpass file for the evaluator, and
the read-only role's for Grafana.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from evaluators.predictions.store import StoreError, open_store
from tunewatch.core.errors import UsageError
from tunewatch.core.secrets import ensure_secret, read_secret, write_pgpass, write_private
from tunewatch.stack.components import LOCALHOST, Component, as_user

log = logging.getLogger("tunewatch.stack")

# The names compose uses too (docker-compose.yml's postgres and init services, and
# grafana/provisioning/datasources/tunewatch.yml).
DATABASE = "tunewatch"
OWNER = "tunewatch"
GRAFANA_ROLE = "tunewatch_grafana"
# PostgreSQL refuses root; the Debian package creates this account.
SERVER_ACCOUNT = "postgres"
# Where Debian's postgresql package puts the server binaries (not on PATH).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
CONNECT_TIMEOUT_SECONDS = 5.0


def postgres_binary(name: str) -> str:
    """A PostgreSQL binary: on PATH, else the newest Debian version's."""
    found = shutil.which(name)
    if found:
        return found
    for version_dir in sorted(Path("/").glob(DEBIAN_BIN_GLOB.lstrip("/")), reverse=True):
        if (version_dir / name).is_file():
            return str(version_dir / name)
    raise UsageError(f"PostgreSQL's {name} not found (on PATH or under {DEBIAN_BIN_GLOB}); "
                     "the Predictions dashboard needs it: run `make up`, whose bootstrap "
                     "installs the Debian package postgresql")


def server_account() -> str | None:
    """The account PostgreSQL runs as: `postgres` when the stack runs as root, else the
    stack's own (None)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError as exc:
        raise UsageError(f"running as root, PostgreSQL needs the {SERVER_ACCOUNT} account "
                         "(the Debian package postgresql creates it)") from exc
    return SERVER_ACCOUNT


@dataclass
class StackPostgres:
    """The cluster: its port, its passwords under `secrets_dir`, its scratch directory."""

    port: int
    secrets_dir: Path
    workdir: Path

    @classmethod
    def create(cls, port: int, secrets_dir: Path) -> StackPostgres:
        """A cluster to be: its scratch directory made now, filled by prepare()."""
        return cls(port, secrets_dir, Path(tempfile.mkdtemp(prefix="tunewatch-stack-pg-")))

    @property
    def owner_password_file(self) -> Path:
        return self.secrets_dir / "owner_password"

    @property
    def grafana_password_file(self) -> Path:
        return self.secrets_dir / "grafana_password"

    @property
    def pgpass_file(self) -> Path:
        return self.secrets_dir / "pgpass"

    @property
    def store_url(self) -> str:
        """The evaluator's store URL (no password: libpq reads PGPASSFILE)."""
        return f"postgresql://{OWNER}@{LOCALHOST}:{self.port}/{DATABASE}"

    def evaluator_env(self) -> dict[str, str]:
        """What the stack's evaluator needs to write its predictions here."""
        return {"TUNEWATCH_PREDICTIONS__STORE_URL": self.store_url,
                "PGPASSFILE": str(self.pgpass_file)}

    def make_secrets(self) -> None:
        """The passwords (kept when present) and the evaluator's pgpass file."""
        for path in (self.owner_password_file, self.grafana_password_file):
            ensure_secret(path)
        write_pgpass(self.pgpass_file, OWNER, read_secret(self.owner_password_file),
                     host=LOCALHOST, port=str(self.port))

    def init_cluster(self) -> None:
        """A new cluster in the scratch directory, owned by the account that runs it."""
        account = server_account()
        (self.workdir / "sock").mkdir(exist_ok=True)
        if account is not None:
            entry = pwd.getpwnam(account)
            for path in (self.workdir, self.workdir / "sock"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._initdb(account)

    def _initdb(self, account: str | None) -> None:
        pwfile = self.workdir / "pwfile"
        owner = None
        if account is not None:
            entry = pwd.getpwnam(account)
            owner = (entry.pw_uid, entry.pw_gid)
        write_private(pwfile, read_secret(self.owner_password_file) + "\n", owner=owner)
        argv = [postgres_binary("initdb"), "-D", str(self.workdir / "data"), "-U", OWNER,
                f"--pwfile={pwfile}", "-A", "scram-sha-256", "-E", "UTF8", "--no-locale",
                "--no-sync"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  cwd=self.workdir, **as_user(account))
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            raise UsageError(f"initdb failed: {done.stderr.strip()}")

    def component(self) -> Component:
        """The server, as one component of the stack (stopped with SIGINT: fast shutdown)."""
        return Component(
            "postgres",
            [postgres_binary("postgres"), "-D", str(self.workdir / "data"),
             "-p", str(self.port), "-k", str(self.workdir / "sock"),
             "-c", f"listen_addresses={LOCALHOST}",
             # A scratch cluster, removed at the end: nothing to keep through a crash.
             "-c", "fsync=off"],
            self.port, "", scheme="postgresql", user=server_account(),
            probe=self.accepting, after_start=self.create_database,
            stop_signal=signal.SIGINT,
        )

    def accepting(self) -> bool:
        """True once the server accepts connections on 127.0.0.1."""
        done = subprocess.run([postgres_binary("pg_isready"), "-q", "-h", LOCALHOST,
                               "-p", str(self.port)], capture_output=True, check=False)
        return done.returncode == 0

    def _owner_url(self, database: str) -> str:
        password = urllib.parse.quote(read_secret(self.owner_password_file), safe="")
        return f"postgresql://{OWNER}:{password}@{LOCALHOST}:{self.port}/{database}"

    def create_database(self) -> None:
        """The database, the predictions schema, and Grafana's read-only role."""
        import psycopg

        try:
            with psycopg.connect(self._owner_url("postgres"), autocommit=True,
                                 connect_timeout=round(CONNECT_TIMEOUT_SECONDS)) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        except psycopg.Error as exc:
            raise UsageError(f"postgres: cannot create database {DATABASE}: {exc}") from exc
        store = open_store(self._owner_url(DATABASE), state_dir=self.secrets_dir,
                           connect_timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            store.migrate()
            store.grant_read_only(GRAFANA_ROLE, read_secret(self.grafana_password_file))
        except StoreError as exc:
            raise UsageError(f"postgres: {exc}") from exc
        finally:
            store.close()
        log.info("postgres: database %s ready, role %s may read the predictions", DATABASE,
                 GRAFANA_ROLE)

    def cleanup(self) -> None:
        """Remove the scratch cluster (once the server has stopped)."""
        shutil.rmtree(self.workdir, ignore_errors=True)
