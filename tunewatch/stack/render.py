"""Prometheus's and Alertmanager's configs for the local stack, from the repository's own.

Why rendered rather than written anew: `make up` must run the rules, routing and templates
that production runs, so it takes the repository's prometheus.yml and alertmanager.yml and
changes only what the stack decides. Prometheus's file-based discovery reads target files
written here (one per process the stack really runs, so a process that does not exist is
not scraped), the ports are the configured ones, and the scrape interval is
`stack.scrape_interval_seconds` so the demo moves quickly. Alertmanager's templates get
absolute paths and its webhook points at the stack's alert-log receiver.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from tunewatch.core.config import Config
from tunewatch.core.errors import UsageError
from tunewatch.stack.components import LOCALHOST, Component

DEFAULT_WEBHOOK = "127.0.0.1:9948"


def render_prometheus_config(
    template: dict[str, Any], cfg: Config, data_dir: Path, rules_dir: Path,
    components: list[Component],
) -> dict[str, Any]:
    """The repository's prometheus.yml adapted to this stack (see module docstring)."""
    out = json.loads(json.dumps(template))
    interval = f"{cfg.stack.scrape_interval_seconds}s"
    out.setdefault("global", {}).update(
        {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval}
    )
    out["rule_files"] = [str(rules_dir / "*.yml")]
    out["alerting"] = {"alertmanagers": [{"static_configs": [
        {"targets": [f"{LOCALHOST}:{cfg.stack.alertmanager_port}"]}]}]}
    static_ports = {"prometheus": cfg.stack.prometheus_port,
                    "alertmanager": cfg.stack.alertmanager_port}
    for job in out.get("scrape_configs", []):
        name = job["job_name"]
        if name in static_ports:
            for group in job.get("static_configs", []):
                group["targets"] = [f"{LOCALHOST}:{static_ports[name]}"]
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(data_dir / "prometheus" / "targets" / name / "*.yml")]
    return out


def write_targets(data_dir: Path, template: dict[str, Any], components: list[Component]) -> None:
    """One file_sd file per job, listing only the processes this stack runs."""
    root = data_dir / "prometheus" / "targets"
    if root.exists():
        shutil.rmtree(root)
    for job in template.get("scrape_configs", []):
        if job.get("file_sd_configs"):
            (root / job["job_name"]).mkdir(parents=True, exist_ok=True)
    for comp in components:
        if comp.job is None:
            continue
        path = root / comp.job / f"{comp.name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        group = [{"targets": [comp.address], "labels": {"host": "local", "role": comp.role}}]
        path.write_text(yaml.safe_dump(group, sort_keys=False))


def render_alertmanager_config(source: Path, cfg: Config) -> str:
    """The repository's alertmanager.yml with absolute template paths and the webhook
    receiver on the configured port."""
    data = yaml.safe_load(source.read_text())
    data["templates"] = [str((source.parent / t).resolve()) for t in data.get("templates", [])]
    webhook = f"{LOCALHOST}:{cfg.stack.webhook_port}"
    for receiver in data.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = hook["url"].replace(DEFAULT_WEBHOOK, webhook)
    return yaml.safe_dump(data, sort_keys=False)


def prepare_files(cfg: Config, data_dir: Path, components: list[Component]) -> None:
    """Write the rendered configs and targets under data_dir, where the binaries read them."""
    prom_src = Path(cfg.stack.prometheus_config)
    am_src = Path(cfg.stack.alertmanager_config)
    for src in (prom_src, am_src):
        if not src.is_file():
            raise UsageError(f"{src}: not found (run from the repository root, or set "
                             "stack.prometheus_config / stack.alertmanager_config)")
    template = yaml.safe_load(prom_src.read_text())
    rules_dir = (prom_src.parent / "rules").resolve()
    rendered = render_prometheus_config(template, cfg, data_dir, rules_dir, components)
    (data_dir / "prometheus").mkdir(parents=True, exist_ok=True)
    (data_dir / "prometheus" / "prometheus.yml").write_text(
        yaml.safe_dump(rendered, sort_keys=False)
    )
    write_targets(data_dir, template, components)
    (data_dir / "alertmanager").mkdir(parents=True, exist_ok=True)
    (data_dir / "alertmanager" / "alertmanager.yml").write_text(
        render_alertmanager_config(am_src, cfg)
    )
