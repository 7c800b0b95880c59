"""`make up` with Grafana: its configuration, command line and provisioning agree with the
stack (ports, paths, the dashboards folder, the read-only role), and the stack's PostgreSQL
takes the evaluator's rows and lets Grafana only read.

No Grafana binary is reachable on the build machines, so Grafana's side is checked on the
files the stack writes and the command line it would run (the binary's path is only a
name); PostgreSQL is the real server the bootstrap installs.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from services import free_port

from evaluators.predictions.store import open_store
from tunewatch.core.config import Config, load_config
from tunewatch.core.errors import UsageError
from tunewatch.stack.components import Component, build_components
from tunewatch.stack.grafana import (
    Dashboards,
    find_grafana,
    grafana_argv,
    no_grafana_line,
    plan_dashboards,
    write_grafana_files,
)
from tunewatch.stack.postgres import DATABASE, GRAFANA_ROLE, OWNER, StackPostgres
from tunewatch.stack.render import prepare_files
from tunewatch.stack.supervisor import Stack

REPO = Path(__file__).resolve().parent.parent
FILE_REFERENCE = re.compile(r"\$__file\{(.+)\}")


def stack_config(data_dir: Path, **extra: str) -> Config:
    """The stack's configuration with every port moved off its default, as a user sets it."""
    env = {"TUNEWATCH_STACK__DATA_DIR": str(data_dir),
           **{f"TUNEWATCH_STACK__{name}_PORT": str(free_port()) for name in
              ("PROMETHEUS", "ALERTMANAGER", "NODE_EXPORTER", "WEBHOOK", "GRAFANA",
               "POSTGRES")},
           **{f"TUNEWATCH_STACK__{k.upper()}": v for k, v in extra.items()}}
    return load_config(REPO / "tunewatch.yml", environ=env)


def tarball_home(tmp_path: Path) -> Path:
    """A Grafana release unpacked (bin/grafana beside conf/defaults.ini); no binary in it."""
    home = tmp_path / "grafana-v11.6.3"
    (home / "conf").mkdir(parents=True)
    (home / "conf" / "defaults.ini").write_text("")
    return home


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def argv_value(comp: Component, flag: str) -> str:
    return next(a.split("=", 1)[1] for a in comp.argv if a.startswith(flag + "="))


@pytest.fixture
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[Config, Dashboards, list[Component], dict[str, Any]]]:
    """The stack planned with a Grafana at a tarball's bin/grafana, its files written."""
    monkeypatch.chdir(REPO)
    data_dir = tmp_path / "var"
    cfg = stack_config(data_dir)
    components, _prom = build_components(cfg, data_dir)
    binary = str(tarball_home(tmp_path) / "bin" / "grafana")
    dashboards = plan_dashboards(cfg, data_dir, binary)
    assert dashboards is not None
    components = dashboards.arrange(components)
    prepare_files(cfg, data_dir, components)
    dashboards.postgres.make_secrets()
    dashboards.new_password = write_grafana_files(cfg, dashboards.files, dashboards.postgres)
    rendered = yaml.safe_load((data_dir / "prometheus" / "prometheus.yml").read_text())
    yield cfg, dashboards, components, rendered
    dashboards.cleanup()


def test_grafana_ini_and_command_line(planned, tmp_path: Path):
    cfg, dashboards, components, _rendered = planned
    grafana = components[-1]
    files = dashboards.files
    home = tmp_path / "grafana-v11.6.3"
    assert grafana.name == "grafana" and grafana.port == cfg.stack.grafana_port
    assert grafana.argv == [str(home / "bin" / "grafana"), "server", "--homepath", str(home),
                            "--config", str(files.ini)]
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(files.ini)
    assert ini["server"]["http_addr"] == "127.0.0.1"
    assert int(ini["server"]["http_port"]) == cfg.stack.grafana_port
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"
    for key in ("data", "logs", "plugins", "provisioning"):
        assert Path(ini["paths"][key]).is_relative_to(Path(cfg.stack.data_dir) / "grafana")
    assert (Path(ini["paths"]["provisioning"]) / "datasources" / "tunewatch.yml").is_file()
    assert (Path(ini["paths"]["provisioning"]) / "dashboards" / "tunewatch.yml").is_file()
    assert Path(ini["paths"]["data"]).is_dir()
    password = FILE_REFERENCE.fullmatch(ini["security"]["admin_password"])
    assert password is not None and Path(password[1]) == files.admin_password
    assert stat.S_IMODE(files.admin_password.stat().st_mode) == 0o600
    assert dashboards.new_password == files.admin_password.read_text()
    overview = REPO / "grafana" / "dashboards" / "overview.json"  # compose's home page
    if overview.is_file():
        assert ini["dashboards"]["default_home_dashboard_path"] == str(overview)
    else:
        assert not ini.has_section("dashboards")


def test_grafana_provisioning_agrees_with_the_stack(planned):
    cfg, dashboards, components, rendered = planned
    provisioning = dashboards.files.provisioning
    sources = {d["type"]: d for d in yaml.safe_load(
        (provisioning / "datasources" / "tunewatch.yml").read_text())["datasources"]}
    by_name = {c.name: c for c in components}
    # Prometheus and Alertmanager where the stack runs them and the rendered config says.
    prom_port = port_of(argv_value(by_name["prometheus"], "--web.listen-address"))
    self_scrape = next(j for j in rendered["scrape_configs"] if j["job_name"] == "prometheus")
    assert port_of(self_scrape["static_configs"][0]["targets"][0]) == prom_port
    assert sources["prometheus"]["url"] == f"http://127.0.0.1:{prom_port}"
    alerting = rendered["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    assert port_of(argv_value(by_name["alertmanager"], "--web.listen-address")) == port_of(
        alerting)
    assert sources["alertmanager"]["url"] == f"http://{alerting}"
    # PostgreSQL: the component, the evaluator's store and Grafana's datasource agree.
    pg = by_name["postgres"]
    assert components[0] is pg and pg.port == cfg.stack.postgres_port
    evaluator_env = by_name["evaluator"].env
    assert evaluator_env["TUNEWATCH_PREDICTIONS__STORE_URL"] == (
        f"postgresql://{OWNER}@127.0.0.1:{pg.port}/{DATABASE}")
    assert Path(evaluator_env["PGPASSFILE"]).read_text().startswith(
        f"127.0.0.1:{pg.port}:*:{OWNER}:")
    source = sources["grafana-postgresql-datasource"]
    assert source["url"] == f"127.0.0.1:{pg.port}"
    assert source["user"] == GRAFANA_ROLE and source["jsonData"]["database"] == DATABASE
    password = FILE_REFERENCE.fullmatch(source["secureJsonData"]["password"])
    assert password is not None and Path(password[1]) == dashboards.postgres.grafana_password_file
    assert stat.S_IMODE(Path(password[1]).stat().st_mode) == 0o600
    # The repository's names are the stack's (compose's init creates the same role).
    template = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/tunewatch.yml").read_text())["datasources"]
    repo_pg = next(d for d in template if d["type"] == "grafana-postgresql-datasource")
    assert (repo_pg["user"], repo_pg["jsonData"]["database"]) == (GRAFANA_ROLE, DATABASE)
    # Dashboards read in place from the repository, each printed with its URL.
    provider = yaml.safe_load((provisioning / "dashboards" / "tunewatch.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == str(REPO / "grafana" / "dashboards")
    banner = dashboards.banner()
    for path in (REPO / "grafana" / "dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        assert f"http://127.0.0.1:{cfg.stack.grafana_port}/d/{dash['uid']}" in banner
    assert dashboards.new_password is not None and dashboards.new_password in banner


def test_admin_password_made_once_and_kept(planned):
    cfg, dashboards, _components, _rendered = planned
    files = dashboards.files
    first = files.admin_password.read_text()
    (files.data / "grafana.db").write_text("grafana's database")
    assert write_grafana_files(cfg, files, dashboards.postgres) is None  # kept: not shown
    assert files.admin_password.read_text() == first
    assert (files.data / "grafana.db").exists()
    files.admin_password.unlink()
    new = write_grafana_files(cfg, files, dashboards.postgres)
    assert new is not None and new != first
    # Grafana sets the password only when it creates its admin: its database starts over.
    assert not (files.data / "grafana.db").exists()


def test_grafana_binaries_and_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tarball_home(tmp_path)
    assert grafana_argv("/usr/sbin/grafana-server", home, tmp_path / "g.ini") == [
        "/usr/sbin/grafana-server", "--homepath", str(home), "--config", str(tmp_path / "g.ini")]
    elsewhere = tmp_path / "no-home"
    elsewhere.mkdir()
    cfg = stack_config(tmp_path / "var", grafana_home=str(elsewhere))
    with pytest.raises(UsageError, match=r"stack\.grafana_home"):
        plan_dashboards(cfg, tmp_path / "var", "/opt/grafana/bin/grafana")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    cfg = stack_config(tmp_path / "var")
    assert find_grafana(cfg) is None and plan_dashboards(cfg, tmp_path / "var", None) is None
    line = no_grafana_line(cfg)
    assert "\n" not in line and "grafana or grafana-server" in line
    assert "docker compose up" in line and "grafana.com" in line


def test_stack_postgres_takes_the_evaluators_rows_and_grafana_only_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pg = StackPostgres.create(free_port(), tmp_path / "var" / "postgres")
    workdir = pg.workdir
    stack = Stack([pg.component()], tmp_path / "logs", ready_timeout=60)
    try:
        pg.make_secrets()
        pg.init_cluster()
        stack.start_all()  # after_start: the database, the schema and the read-only role
        env = pg.evaluator_env()
        monkeypatch.setenv("PGPASSFILE", env["PGPASSFILE"])  # as the evaluator runs
        store = open_store(env["TUNEWATCH_PREDICTIONS__STORE_URL"], state_dir=tmp_path)
        try:
            assert store.version() > 0
        finally:
            store.close()
        monkeypatch.delenv("PGPASSFILE")
        grafana = {"host": "127.0.0.1", "port": pg.port, "user": GRAFANA_ROLE,
                   "dbname": DATABASE}
        password = pg.grafana_password_file.read_text()
        with psycopg.connect(**grafana, password=password) as conn:
            assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("DELETE FROM predictions")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(**grafana, password=password + "-wrong").close()
    finally:
        stack.stop_all()
        pg.cleanup()
    assert not workdir.exists()
    assert stat.S_IMODE(pg.pgpass_file.stat().st_mode) == 0o600
    assert os.path.getsize(pg.owner_password_file) > 0
