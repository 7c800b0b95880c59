"""`tunewatch secrets`: the secret files of the compose stack, created and handed over.

Why a command: `docker compose up` stops at the first secret file it lacks, and the
passwords must be random, private and never overwritten (PostgreSQL and Grafana keep the
first one they were given). What each action does lives in tunewatch/core/secrets.py.

    tunewatch secrets create                        # what `make secrets` runs, on the host
    tunewatch secrets hand-over --from /run/secrets --to /handover/grafana --uid 472 \\
        grafana_admin_password postgres_grafana_password        # in compose's `init`
    tunewatch secrets pgpass --password-file /run/secrets/postgres_password \\
        --user tunewatch --output /handover/evaluator/pgpass --uid 10001
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError
from tunewatch.core.secrets import (
    compose_secret_files,
    ensure_secret,
    hand_over,
    read_secret,
    write_pgpass,
)

DEFAULT_COMPOSE_FILE = "docker-compose.yml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("create", help="every file secret of the compose file that is missing: "
                                      "a random value, mode 0600 (existing ones are kept)")
    p.add_argument("--compose-file", default=DEFAULT_COMPOSE_FILE,
                   help=f"the compose file whose secrets to create (default "
                        f"{DEFAULT_COMPOSE_FILE})")
    p = sub.add_parser("hand-over", help="copies of secrets that only one user may read "
                                         "(mode 0400), for a container's non-root process")
    p.add_argument("--from", dest="source", required=True, help="directory of the secrets")
    p.add_argument("--to", dest="dest", required=True, help="directory of the copies")
    _owner_arguments(p)
    p.add_argument("names", nargs="+", help="secret file names")
    p = sub.add_parser("pgpass", help="a pgpass file (PGPASSFILE) holding a password file's "
                                      "value for one PostgreSQL user, any host and database")
    p.add_argument("--password-file", required=True)
    p.add_argument("--user", required=True, help="the PostgreSQL user")
    p.add_argument("--output", required=True, help="the pgpass file to write (mode 0600)")
    _owner_arguments(p)


def _owner_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uid", type=int, required=True, help="owner of the written files")
    p.add_argument("--gid", type=int, default=0, help="their group (default 0)")


def _create(args: argparse.Namespace) -> int:
    for name, path in compose_secret_files(Path(args.compose_file)).items():
        state = "created (random, mode 0600)" if ensure_secret(path) else "kept"
        sys.stdout.write(f"{path}: {name} {state}\n")
    return 0


def _hand_over(args: argparse.Namespace) -> int:
    for name in args.names:
        dest = Path(args.dest) / name
        hand_over(Path(args.source) / name, dest, (args.uid, args.gid))
        sys.stdout.write(f"{dest}: {name} for uid {args.uid} (mode 0400)\n")
    return 0


def _pgpass(args: argparse.Namespace) -> int:
    password = read_secret(Path(args.password_file))
    write_pgpass(Path(args.output), args.user, password, (args.uid, args.gid))
    sys.stdout.write(f"{args.output}: pgpass of {args.user} for uid {args.uid} (mode 0600)\n")
    return 0


def run(args: argparse.Namespace, cfg: Config) -> int:
    actions = {"create": _create, "hand-over": _hand_over, "pgpass": _pgpass}
    try:
        return actions[args.action](args)
    except OSError as exc:  # a directory not writable, a chown refused (not root)
        raise UsageError(f"{exc.filename or args.action}: {exc.strerror or exc}") from exc
