"""Secret files: random values created once, kept private, never overwritten or logged.

Why one module: the same rule serves three places. `make secrets` (`tunewatch secrets
create`) makes every secret file docker-compose.yml names before its first `up`; the compose
stack's one-shot `init` service hands those secrets to the processes that read them as
non-root users (`tunewatch secrets hand-over` and `pgpass`); and `make up` keeps the
passwords of its Grafana and PostgreSQL under `var/`.

Why a hand-over at all: Compose bind-mounts a file secret with its host owner and mode, so a
0600 file is readable in a container only by root; Grafana (uid 472) and the evaluator
(uid 10001, the Dockerfile's) get their own copies, owned by them, from the `init` service
that runs as root.

A value is 32 random bytes, URL-safe base64 (no `:`, `\\`, `@` or `/`), so it fits a
pgpass line, a connection URL and an ini file unquoted. Files hold the value without a
newline. Existing values are kept: PostgreSQL and Grafana keep the password they were
first given, so a new one would lock them out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

import yaml

from tunewatch.core.errors import UsageError

log = logging.getLogger("tunewatch.secrets")

SECRET_BYTES = 32
FILE_MODE = 0o600
DIR_MODE = 0o700
# A handed-over copy: only its reader, and only reading.
HANDED_OVER_MODE = 0o400
# pgpass fields (host:port:database:user:password); `*` matches anything.
PGPASS_ANY = "*"


def new_secret() -> str:
    """A fresh random value (256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def read_secret(path: Path) -> str:
    """The value in `path`, surrounding whitespace removed; an error naming the file when it
    is missing, unreadable or empty (an empty password is never what was meant)."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"cannot read secret {path}: {exc.strerror or exc}") from exc
    if not value:
        raise UsageError(f"secret {path} is empty")
    return value


def _make_dir(path: Path, owner: tuple[int, int] | None = None) -> None:
    """The directory of secret files: created 0700, and given to `owner` when one is named
    so that its reader can reach the files (an existing one is left as it is)."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(path, DIR_MODE)  # mkdir's mode passes through the umask
        if owner is not None:
            os.chown(path, *owner)


def _temp_copy(path: Path, text: str, mode: int, owner: tuple[int, int] | None) -> Path:
    """`text` in a new file beside `path`, with its final mode and owner, synced."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(name)
        raise
    os.close(fd)
    return Path(name)


def write_private(path: Path, text: str, mode: int = FILE_MODE,
                  owner: tuple[int, int] | None = None) -> None:
    """Replace `path` by `text` at once (a reader sees the old file or the new one), with
    `mode` and, when given, owner (uid, gid) set before the content is visible."""
    _make_dir(path.parent, owner)
    temp = _temp_copy(path, text, mode, owner)
    try:
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)
        raise


def _tighten(path: Path) -> None:
    """An existing secret readable by others is made 0600 (its value is kept)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~FILE_MODE:
        os.chmod(path, FILE_MODE)
        log.warning("%s was mode %o: now %o", path, mode, FILE_MODE)


def ensure_secret(path: Path) -> bool:
    """Create `path` with a new random value, mode 0600, unless it already holds one.

    True when created. Idempotent and safe against a second run at the same time: the new
    file is linked into place only if none exists (an empty one is replaced). An existing
    value is kept, its mode tightened to 0600.
    """
    if path.is_file() and path.stat().st_size > 0:
        _tighten(path)
        return False
    _make_dir(path.parent)
    temp = _temp_copy(path, new_secret(), FILE_MODE, None)
    try:
        if path.exists():  # empty: nothing to keep
            os.replace(temp, path)
            return True
        try:
            os.link(temp, path)
        except FileExistsError:
            return False  # created meanwhile by another run: that value stands
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def compose_secret_files(compose_file: Path) -> dict[str, Path]:
    """name -> file of every file-based secret a compose file declares (top-level
    `secrets:` with `file:`), relative paths taken from the compose file's directory, as
    Compose does. `environment:` and `external:` secrets have no file to create."""
    try:
        data = yaml.safe_load(compose_file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UsageError(f"cannot read {compose_file}: {exc.strerror or exc}") from exc
    files: dict[str, Path] = {}
    for name, spec in (data.get("secrets") or {}).items():
        if not isinstance(spec, dict) or "file" not in spec:
            continue
        text = str(spec["file"])
        if "$" in text:
            raise UsageError(f"{compose_file}: secret {name}: file {text!r} uses a variable; "
                             "create it yourself")
        files[name] = Path(os.path.normpath(compose_file.parent / text))
    return files


def hand_over(source: Path, dest: Path, owner: tuple[int, int]) -> None:
    """A copy of the secret in `source` at `dest`, readable only by `owner` (uid, gid)."""
    write_private(dest, read_secret(source), HANDED_OVER_MODE, owner)


def pgpass_field(value: str) -> str:
    """A pgpass field: `:` and `\\` escaped with a backslash (libpq's rule)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_line(user: str, password: str, host: str = PGPASS_ANY, port: str = PGPASS_ANY,
                database: str = PGPASS_ANY) -> str:
    """One pgpass line for `user`; `*` (the default) matches any host, port or database."""
    fields = [host, port, database, pgpass_field(user), pgpass_field(password)]
    return ":".join(fields) + "\n"


def write_pgpass(dest: Path, user: str, password: str, owner: tuple[int, int] | None = None,
                 host: str = PGPASS_ANY, port: str = PGPASS_ANY) -> None:
    """A pgpass file (PGPASSFILE) for `user`, mode 0600: libpq ignores one that its group
    or others may read."""
    write_private(dest, pgpass_line(user, password, host, port), FILE_MODE, owner)
