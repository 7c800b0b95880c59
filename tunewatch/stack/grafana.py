"""Grafana in the local stack: the dashboards of `make up`, where a Grafana binary exists.

Why optional: Grafana is not a Debian package, so the bootstrap cannot install it. When
`grafana` (or the older `grafana-server`) is on PATH, as Grafana's own packages install
them, the stack also starts it on 127.0.0.1 (`stack.grafana_port`, 3000) with the
repository's provisioning, and the PostgreSQL its Predictions dashboard reads
(tunewatch/stack/postgres.py); otherwise one line says how to get Grafana or use compose.

What is rendered under `var/grafana/`, from the repository's files as render.py does for
Prometheus: grafana.ini (the listen address, data, logs and plugins under `var/grafana/`,
anonymous access and sign-up off, as compose sets them), the datasources with this stack's
ports and the read-only role's password file, and the dashboard provider reading
`grafana/dashboards/` in place. The admin password is generated once, kept in
`var/grafana/admin_password` (0600) and printed when it is new.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError
from tunewatch.core.secrets import ensure_secret, read_secret
from tunewatch.stack.components import LOCALHOST, Component
from tunewatch.stack.postgres import DATABASE, GRAFANA_ROLE, StackPostgres

log = logging.getLogger("tunewatch.stack")

ADMIN_USER = "admin"
# Where Grafana's Debian and RPM packages put its home (public/, conf/defaults.ini).
PACKAGE_HOMES = (Path("/usr/share/grafana"),)
DEFAULTS_INI = Path("conf") / "defaults.ini"
# The binary that takes no `server` subcommand (Grafana before 10, and its wrapper since).
LEGACY_SERVER = "grafana-server"
DATASOURCES = Path("datasources") / "tunewatch.yml"
DASHBOARD_PROVIDER = Path("dashboards") / "tunewatch.yml"
POSTGRES_TYPE = "grafana-postgresql-datasource"
GRAFANA_DB = "grafana.db"
# Grafana's home page, as in docker-compose.yml.
HOME_DASHBOARD = "overview.json"
NO_GRAFANA = (
    "dashboards: no Grafana on PATH ({names}); install Grafana "
    "(https://grafana.com/docs/grafana/latest/setup-grafana/installation/) and run `make up` "
    "again, or run the whole stack with Docker: `make secrets && docker compose up -d`"
)


def find_grafana(cfg: Config) -> str | None:
    """The first of `stack.grafana_bins` on PATH, or None (an empty list: no Grafana)."""
    for name in cfg.stack.grafana_bins:
        found = shutil.which(name)
        if found:
            return found
    return None


def no_grafana_line(cfg: Config) -> str:
    """The one line `make up` prints where no Grafana binary is found."""
    return NO_GRAFANA.format(names=" or ".join(cfg.stack.grafana_bins) or "none configured")


def grafana_home(cfg: Config, binary: str) -> Path:
    """Grafana's home directory (conf/defaults.ini, public/): `stack.grafana_home`, else the
    directory above the binary's (a tarball's bin/grafana, a package's symlink resolved),
    else the packages' /usr/share/grafana."""
    if cfg.stack.grafana_home:
        candidates = [Path(cfg.stack.grafana_home)]
    else:
        candidates = [Path(binary).resolve().parent.parent, *PACKAGE_HOMES]
    for home in candidates:
        if (home / DEFAULTS_INI).is_file():
            return home
    raise UsageError(f"Grafana's home (with {DEFAULTS_INI}) not found for {binary}: looked in "
                     f"{', '.join(map(str, candidates))}; set stack.grafana_home")


def grafana_argv(binary: str, home: Path, ini: Path) -> list[str]:
    """`grafana server --homepath HOME --config INI` (`grafana-server` takes no `server`)."""
    server = [] if Path(binary).name == LEGACY_SERVER else ["server"]
    return [binary, *server, "--homepath", str(home), "--config", str(ini)]


@dataclass
class GrafanaFiles:
    """What the stack's Grafana reads and writes, all under `root` (`var/grafana`)."""

    root: Path

    @property
    def ini(self) -> Path:
        return self.root / "grafana.ini"

    @property
    def admin_password(self) -> Path:
        return self.root / "admin_password"

    @property
    def provisioning(self) -> Path:
        return self.root / "provisioning"

    @property
    def data(self) -> Path:
        return self.root / "data"


def render_ini(cfg: Config, files: GrafanaFiles) -> str:
    """grafana.ini for the stack; the admin password is read from its file by Grafana."""
    sections: dict[str, dict[str, str]] = {
        "paths": {"data": str(files.data), "logs": str(files.root / "logs"),
                  "plugins": str(files.root / "plugins"),
                  "provisioning": str(files.provisioning)},
        "server": {"http_addr": LOCALHOST, "http_port": str(cfg.stack.grafana_port)},
        "security": {"admin_user": ADMIN_USER,
                     "admin_password": f"$__file{{{files.admin_password}}}"},
        "users": {"allow_sign_up": "false"},
        "auth.anonymous": {"enabled": "false"},
        "analytics": {"reporting_enabled": "false", "check_for_updates": "false",
                      "check_for_plugin_updates": "false"},
        "log": {"mode": "console"},
    }
    home = Path(cfg.stack.grafana_dashboards).resolve() / HOME_DASHBOARD
    if home.is_file():  # as docker-compose.yml's GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH
        sections["dashboards"] = {"default_home_dashboard_path": str(home)}
    lines = ["; Written by `tunewatch up` at every start (tunewatch/stack/grafana.py)."]
    for name, keys in sections.items():
        lines += ["", f"[{name}]", *(f"{key} = {value}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def render_datasources(template: dict[str, Any], cfg: Config,
                       postgres: StackPostgres) -> dict[str, Any]:
    """The repository's datasources with this stack's addresses, and the read-only role's
    name, database and password file (those of postgres.py, so they agree by construction)."""
    out = json.loads(json.dumps(template))
    urls = {"prometheus": f"http://{LOCALHOST}:{cfg.stack.prometheus_port}",
            "alertmanager": f"http://{LOCALHOST}:{cfg.stack.alertmanager_port}",
            POSTGRES_TYPE: f"{LOCALHOST}:{postgres.port}"}
    for source in out.get("datasources", []):
        if source.get("type") in urls:
            source["url"] = urls[source["type"]]
        if source.get("type") == POSTGRES_TYPE:
            source["user"] = GRAFANA_ROLE
            source.setdefault("jsonData", {})["database"] = DATABASE
            source["secureJsonData"] = {
                "password": f"$__file{{{postgres.grafana_password_file}}}"}
    return out


def render_dashboard_provider(template: dict[str, Any], dashboards: Path) -> dict[str, Any]:
    """The repository's dashboard provider, reading the committed dashboards in place."""
    out = json.loads(json.dumps(template))
    for provider in out.get("providers", []):
        provider.setdefault("options", {})["path"] = str(dashboards)
    return out


def dashboard_links(cfg: Config) -> list[tuple[str, str]]:
    """(title, URL) of every committed dashboard, by its uid."""
    links = []
    for path in sorted(Path(cfg.stack.grafana_dashboards).glob("*.json")):
        dash = json.loads(path.read_text(encoding="utf-8"))
        links.append((dash["title"],
                      f"http://{LOCALHOST}:{cfg.stack.grafana_port}/d/{dash['uid']}"))
    return links


def _load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: not found (run from the repository root, or set "
                         "stack.grafana_provisioning)")
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def write_grafana_files(cfg: Config, files: GrafanaFiles, postgres: StackPostgres) -> str | None:
    """grafana.ini and the provisioning under `files.root`; the admin password made when
    absent. Returns the new password (to print once), or None when it was kept. A new
    password with an old Grafana database would not take (Grafana sets it only when it
    creates its admin), so that database goes: it holds no dashboard, they are provisioned."""
    dashboards = Path(cfg.stack.grafana_dashboards).resolve()
    if not dashboards.is_dir():
        raise UsageError(f"{dashboards}: not found (set stack.grafana_dashboards)")
    source = Path(cfg.stack.grafana_provisioning)
    datasources = _load_yaml(source / DATASOURCES)
    provider = _load_yaml(source / DASHBOARD_PROVIDER)
    new_password = None
    if ensure_secret(files.admin_password):
        new_password = read_secret(files.admin_password)
        (files.data / GRAFANA_DB).unlink(missing_ok=True)
    for sub, data in ((DATASOURCES, render_datasources(datasources, cfg, postgres)),
                      (DASHBOARD_PROVIDER, render_dashboard_provider(provider, dashboards))):
        (files.provisioning / sub).parent.mkdir(parents=True, exist_ok=True)
        (files.provisioning / sub).write_text(yaml.safe_dump(data, sort_keys=False))
    files.data.mkdir(parents=True, exist_ok=True)
    files.ini.write_text(render_ini(cfg, files))
    return new_password


@dataclass
class Dashboards:
    """Grafana and its PostgreSQL as components of the stack."""

    cfg: Config
    files: GrafanaFiles
    postgres: StackPostgres
    grafana: Component
    new_password: str | None = field(default=None, repr=False)

    def arrange(self, components: list[Component]) -> list[Component]:
        """PostgreSQL first (the evaluator writes to it), Grafana last; the evaluator's
        predictions go to this PostgreSQL."""
        for comp in components:
            if comp.name == "evaluator":
                comp.env.update(self.postgres.evaluator_env())
        return [self.postgres.component(), *components, self.grafana]

    def prepare(self) -> None:
        """The passwords, Grafana's files, and the PostgreSQL cluster."""
        self.postgres.make_secrets()
        self.new_password = write_grafana_files(self.cfg, self.files, self.postgres)
        self.postgres.init_cluster()

    def banner(self) -> str:
        """The lines `make up` prints: where to log in, and each dashboard's URL."""
        lines = [f"  dashboards (Grafana, user {ADMIN_USER}, password in "
                 f"{self.files.admin_password}):"]
        lines += [f"    {title:<28} {url}" for title, url in dashboard_links(self.cfg)]
        if self.new_password is not None:
            lines.append(f"  Grafana's new admin password (shown this once): "
                         f"{self.new_password}")
        return "\n".join(lines)

    def cleanup(self) -> None:
        self.postgres.cleanup()


def plan_dashboards(cfg: Config, data_dir: Path, binary: str | None) -> Dashboards | None:
    """Grafana and its PostgreSQL for the Grafana `binary` (None: no dashboards)."""
    if binary is None:
        return None
    files = GrafanaFiles(data_dir / "grafana")
    grafana = Component(
        "grafana", grafana_argv(binary, grafana_home(cfg, binary), files.ini),
        cfg.stack.grafana_port, "/api/health")
    postgres = StackPostgres.create(cfg.stack.postgres_port, data_dir / "postgres")
    return Dashboards(cfg, files, postgres, grafana)
