"""The exporter-toolkit web configuration file: TLS, client certificates and basic auth.

Why: Prometheus and every exporter built on prometheus/exporter-toolkit take
`--web.config.file` in one YAML format, so an operator who secured node_exporter secures
tunewatch the same way, with the same file. client_python offers TLS but no basic auth, so
this module reads the format and the server (exporters/server.py) enforces it.

Supported keys (https://prometheus.io/docs/prometheus/latest/configuration/https/):

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default),
                                       # RequestClientCert, RequireAnyClientCert,
                                       # VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS12               # TLS10..TLS13
      max_version: TLS13
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      alice: $2y$10$...                # bcrypt hashes only, never a plain password

Unknown and unsupported keys are an error naming the file and the key (exporter-toolkit also
refuses unknown keys): a typo in a security setting must not silently leave an endpoint open.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# cipher_suites, curve_preferences and client_allowed_sans are not implemented: they are
# refused as unsupported rather than accepted and ignored.
TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version"}
TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
HTTP_KEYS = {"headers"}


class WebConfigError(ValueError):
    """The web config file is unusable; the message names the file and the key."""


@dataclass
class BasicAuth:
    """Checks `Authorization: Basic` credentials against bcrypt hashes.

    bcrypt is slow on purpose (tens of milliseconds per check); a scraper sends the same
    credentials every few seconds, so successful checks are remembered by a keyed digest
    (as exporter-toolkit caches them), never by the password itself.
    """

    users: dict[str, bytes]
    _cache: set[bytes] = field(default_factory=set)
    _key: bytes = field(default_factory=lambda: os.urandom(32))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, user: str, password: str) -> bool:
        hashed = self.users.get(user)
        digest = hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()
        with self._lock:
            if digest in self._cache:
                return True
        if hashed is None:
            # Spend the same time as a real check so user names cannot be probed by timing.
            bcrypt.checkpw(password.encode(), _DUMMY_HASH)
            return False
        ok = bcrypt.checkpw(password.encode(), hashed)
        if ok:
            with self._lock:
                self._cache.add(digest)
        return ok


_DUMMY_HASH = bcrypt.hashpw(b"tunewatch-timing-equaliser", bcrypt.gensalt(rounds=10))


@dataclass
class WebConfig:
    """What the server needs from the file: an SSL context, users, extra headers."""

    source: str = ""
    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


def load_web_config(path: str | Path | None) -> WebConfig:
    """Parse and check the file; an empty path means plain HTTP without auth."""
    if not path:
        return WebConfig()
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"{file}: cannot read web config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise WebConfigError(f"{file}: expected a mapping at the top level")
    _check_keys(file, "", data, TOP_KEYS)
    return WebConfig(
        source=str(file),
        ssl_context=_tls(file, data.get("tls_server_config")),
        basic_auth=_users(file, data.get("basic_auth_users")),
        headers=_headers(file, data.get("http_server_config")),
    )


def _check_keys(file: Path, prefix: str, data: dict[str, Any], known: set[str]) -> None:
    for key in data:
        if key not in known:
            raise WebConfigError(
                f"{file}: unknown or unsupported key '{prefix}{key}' "
                f"(supported: {', '.join(sorted(known))})"
            )


def _resolve(file: Path, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{file}: key '{key}' must be a file path")
    path = Path(value)
    path = path if path.is_absolute() else file.parent / path
    if not path.is_file():
        raise WebConfigError(f"{file}: key '{key}': no such file {path}")
    return str(path)


def _tls(file: Path, tls: Any) -> ssl.SSLContext | None:
    if tls is None:
        return None
    if not isinstance(tls, dict):
        raise WebConfigError(f"{file}: key 'tls_server_config' must be a mapping")
    _check_keys(file, "tls_server_config.", tls, TLS_KEYS)
    cert = _resolve(file, tls.get("cert_file"), "tls_server_config.cert_file")
    key = _resolve(file, tls.get("key_file"), "tls_server_config.key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise WebConfigError(f"{file}: cert_file/key_file unusable: {exc}") from exc
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if name in tls:
            if tls[name] not in TLS_VERSIONS:
                raise WebConfigError(f"{file}: key 'tls_server_config.{name}' must be one of "
                                     f"{', '.join(TLS_VERSIONS)}")
            setattr(ctx, attr, TLS_VERSIONS[tls[name]])
    _client_auth(file, tls, ctx)
    return ctx


def _client_auth(file: Path, tls: dict[str, Any], ctx: ssl.SSLContext) -> None:
    mode = tls.get("client_auth_type", "NoClientCert")
    if mode not in CLIENT_AUTH:
        raise WebConfigError(f"{file}: key 'tls_server_config.client_auth_type' must be one "
                             f"of {', '.join(CLIENT_AUTH)}")
    ctx.verify_mode = CLIENT_AUTH[mode]
    if ctx.verify_mode != ssl.CERT_NONE:
        if "client_ca_file" not in tls:
            raise WebConfigError(f"{file}: client_auth_type {mode} needs "
                                 "'tls_server_config.client_ca_file'")
        ctx.load_verify_locations(
            _resolve(file, tls["client_ca_file"], "tls_server_config.client_ca_file"))


def _users(file: Path, users: Any) -> BasicAuth | None:
    if users is None:
        return None
    if not isinstance(users, dict) or not users:
        raise WebConfigError(f"{file}: key 'basic_auth_users' must map user names to hashes")
    hashed: dict[str, bytes] = {}
    for user, value in users.items():
        if not isinstance(value, str) or not value.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{file}: key 'basic_auth_users.{user}' must be a bcrypt hash "
                                 "(htpasswd -nBC 10 USER, or python -c 'import bcrypt; ...')")
        # Go's bcrypt writes $2y$/$2a$; the Python library checks $2b$ the same way.
        hashed[str(user)] = ("$2b$" + value[4:]).encode()
    return BasicAuth(hashed)


def _headers(file: Path, http: Any) -> dict[str, str]:
    if http is None:
        return {}
    if not isinstance(http, dict):
        raise WebConfigError(f"{file}: key 'http_server_config' must be a mapping")
    _check_keys(file, "http_server_config.", http, HTTP_KEYS)
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError(f"{file}: key 'http_server_config.headers' must be a mapping")
    return {str(k): str(v) for k, v in headers.items()}
