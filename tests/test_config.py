"""Configuration: documented defaults, environment overrides, errors that name the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunewatch.core.config import ConfigError, as_dict, load_config


def test_defaults_follow_the_design_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={})
    assert cfg.exporter.listen_address == "127.0.0.1:9945"
    assert cfg.training.listen_address == "127.0.0.1:9946"
    assert cfg.evaluator.listen_address == "127.0.0.1:9947"
    assert cfg.source == "(defaults)"


def test_shipped_tunewatch_yml_is_valid(repo_root: Path):
    cfg = load_config(repo_root / "tunewatch.yml", environ={})
    assert cfg.source.endswith("tunewatch.yml")


def test_environment_overrides_file(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: from-file\nevaluator:\n  batch_size: 8\n")
    env = {"TUNEWATCH_RUN": "from-env", "TUNEWATCH_EVALUATOR__BATCH_SIZE": "4",
           "TUNEWATCH_STACK__PROMETHEUS_PORT": "19999"}
    cfg = load_config(path, environ=env)
    assert (cfg.run, cfg.evaluator.batch_size, cfg.stack.prometheus_port) == ("from-env", 4, 19999)


def test_unknown_key_is_named_with_file_and_line(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: x\nevaluator:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}:3: key 'evaluator.batch_sise': unknown key" in str(err.value)


def test_a_key_given_twice_is_named_with_both_lines(tmp_path: Path):
    """YAML keeps the last of two equal keys silently: a second `evaluator:` appended to the
    file would drop every setting of the first."""
    path = tmp_path / "tw.yml"
    path.write_text("evaluator:\n  batch_size: 8\nrun: x\nevaluator:\n  device: cpu\n"
                    "exporter:\n  queue_dirs:\n    - {path: a, path: b}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert f"{path}:4: key 'evaluator' is given twice (first on line 1)" in str(err.value)
    assert f"{path}:8: key 'exporter.queue_dirs[0].path' is given twice" in str(err.value)
    path.write_text("evaluator:\n  batch_size: 8\nexporter:\n  queue_dirs:\n"
                    "    - {path: a}\n    - {path: b}\n")
    assert load_config(path, environ={}).evaluator.batch_size == 8  # equal keys, two items


@pytest.mark.parametrize("in_file", ["run: x\n", "exporter:\n  queue_dirs:\n    - {path: f}\n"])
def test_an_error_inside_a_variable_s_yaml_value_names_the_variable(tmp_path: Path,
                                                                    in_file: str):
    """Also where the file has a list at that key: its items' lines are not the value's."""
    path = tmp_path / "tw.yml"
    path.write_text(in_file)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"TUNEWATCH_EXPORTER__QUEUE_DIRS": "[{path: q, priority: 9}]"})
    assert "TUNEWATCH_EXPORTER__QUEUE_DIRS" in str(err.value)
    assert f"{path}" not in str(err.value)


def test_wrong_type_and_range_are_named(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("evaluator:\n  max_new_tokens: many\n")
    expected = r":2: key 'evaluator.max_new_tokens': expected an integer"
    with pytest.raises(ConfigError, match=expected):
        load_config(path, environ={})
    path.write_text("evaluator:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"key 'evaluator.batch_size': must be at least 1"):
        load_config(path, environ={})


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"TUNEWATCH_EXPORTER__MAX_CONCURRENT_SCRAPES": "lots"})
    assert ("environment variable TUNEWATCH_EXPORTER__MAX_CONCURRENT_SCRAPES='lots': "
            "key 'exporter.max_concurrent_scrapes': expected") in str(err.value)


def test_three_levels_from_the_environment(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("evaluator:\n  remote:\n    job_timeout_seconds: 30\n")
    env = {"TUNEWATCH_EVALUATOR__REMOTE__URL": "http://127.0.0.1:8000",
           "TUNEWATCH_LOG_LEVEL": "debug"}
    cfg = load_config(path, environ=env)
    assert cfg.evaluator.remote.url == "http://127.0.0.1:8000"
    assert cfg.evaluator.remote.job_timeout_seconds == 30  # the file's sibling key survives
    assert cfg.log_level == "debug"


@pytest.mark.parametrize(("name", "value", "key"), [
    ("TUNEWATCH_NOSECTION__KEY", "1", "nosection"),
    ("TUNEWATCH_EVALUATOR__REMOTE__URLL", "http://127.0.0.1:8000", "evaluator.remote.urll"),
    ("TUNEWATCH_EVALUATOR__NOPE__URL", "x", "evaluator.nope"),
])
def test_unknown_environment_key_names_the_variable_not_the_file(
        tmp_path: Path, name: str, value: str, key: str):
    path = tmp_path / "tw.yml"
    path.write_text("run: from-file\nevaluator:\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={name: value})
    message = str(err.value)
    assert f"environment variable {name}={value!r}: key '{key}': unknown key" in message
    assert str(path) not in message


def test_bad_single_name_value_is_named():
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={"TUNEWATCH_LOG_LEVEL": "verbose"})
    assert "environment variable TUNEWATCH_LOG_LEVEL='verbose': key 'log_level'" in str(err.value)


@pytest.mark.parametrize("env", [
    {"TUNEWATCH_EVALUATOR__": "1"},
    {"TUNEWATCH_EVALUATOR____URL": "1"},
    {"TUNEWATCH_EVALUATOR__REMOTE": "x", "TUNEWATCH_EVALUATOR__REMOTE__URL": "y"},
])
def test_malformed_environment_names_are_errors(env: dict[str, str]):
    with pytest.raises(ConfigError, match=r"environment variable TUNEWATCH_EVALUATOR__"):
        load_config(None, environ=env)


def test_other_single_names_are_ignored():
    env = {"TUNEWATCH_TORCH_VERSION": "2.13.0", "TUNEWATCH_BOOTSTRAP_OPTIONAL": "1",
           "TUNEWATCH_EVALUATOR": "x", "TUNEWATCH_": "y"}
    assert as_dict(load_config(None, environ=env)) == as_dict(load_config(None, environ={}))


def _compose_variables(repo_root: Path) -> dict[str, str]:
    """Every `${TUNEWATCH_*}` the compose files interpolate, with a value a user would set."""
    found: dict[str, str] = {}
    for compose in sorted(repo_root.glob("docker-compose*.yml")):
        for name, default in re.findall(r"\$\{(TUNEWATCH_\w+)(?::?-([^}]*))?\}",
                                        compose.read_text()):
            found[name] = default or "http://127.0.0.1:8000"
    return found


def test_every_compose_variable_exported_at_once_breaks_nothing(repo_root: Path):
    variables = _compose_variables(repo_root)
    for name in ("TUNEWATCH_REMOTE_URL", "TUNEWATCH_EVAL_BACKEND", "TUNEWATCH_DATA_ROOT",
                 "TUNEWATCH_CHECKPOINTS", "TUNEWATCH_SUITE"):
        assert name in variables  # the documented compose variables are all covered
    env = {**os.environ, **variables, "TUNEWATCH_TORCH_VERSION": "2.13.0"}
    env.pop("TUNEWATCH_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "--config", str(repo_root / "tunewatch.yml"),
         "config"], capture_output=True, text=True, check=False, env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr


def test_garbage_yaml_names_the_line(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("run: ok\nevaluator: [unclosed\n")
    with pytest.raises(ConfigError, match=r"tw.yml:\d+: invalid YAML"):
        load_config(path, environ={})


def test_cli_reports_a_bad_config_in_one_line_without_traceback(tmp_path: Path):
    path = tmp_path / "tw.yml"
    path.write_text("stack:\n  prometheus_port: nine\n")
    done = subprocess.run(
        [sys.executable, "-m", "tunewatch", "--config", str(path), "config"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2
    assert "key 'stack.prometheus_port'" in done.stderr
    assert "Traceback" not in done.stderr


def test_shipped_tunewatch_yml_documents_exactly_the_defaults(repo_root: Path):
    from tunewatch.core.config import Config, as_dict

    shipped = as_dict(load_config(repo_root / "tunewatch.yml", environ={}))
    assert shipped == as_dict(Config())


def test_a_flag_that_sets_a_key_counts_for_the_rules_and_is_blamed_by_name():
    """--remote-url supplies the URL deploy_best needs: the rule sees it at load time (it
    refused the command, blaming tunewatch.yml, before the flag was read)."""
    env = {"TUNEWATCH_EVALUATOR__REMOTE__DEPLOY_BEST": "true",
           "TUNEWATCH_EVALUATOR__REMOTE__ACTIVATE": "true"}
    with pytest.raises(ConfigError, match=r"evaluator\.remote\.url"):
        load_config(None, environ=env)
    flags = {"evaluator.remote.url": ("--remote-url", "http://127.0.0.1:8765"),
             "evaluator.backend": ("--backend", "remote")}
    cfg = load_config(None, environ=env, flags=flags)
    assert (cfg.evaluator.backend, cfg.evaluator.remote.url) == (
        "remote", "http://127.0.0.1:8765")
    env["TUNEWATCH_EVALUATOR__REMOTE__URL"] = "http://from-env:1"  # a flag beats a variable
    assert load_config(None, environ=env, flags=flags).evaluator.remote.url.endswith(":8765")
    with pytest.raises(ConfigError) as err:
        load_config(None, environ=env, flags={"evaluator.remote.url": ("--remote-url", "h:1")})
    assert "command line flag --remote-url='h:1': key 'evaluator.remote.url'" in str(err.value)
