"""Render prometheus/rules/*.yml and prometheus/tests/*.yml from prometheus/templates/.

Why generated (the monitoring-mixin `_config` pattern): every alert threshold lives once, in
prometheus/templates/config.yml, and both the rules and their promtool unit tests are
rendered from templates over it. A test written as "the queue holds
`<< data_queue_min_files - 1 >>` files" keeps testing both sides of the boundary after the
threshold changes, which a test with the number written out would not.

Templates are the rule and test files with `<< python expression >>` placeholders, named
`NAME.yml.tmpl` (rendered to NAME.yml): they are not rule files themselves, and a tool that
checks every `*.yml` rule file it finds must not take them for rules. An
expression sees the thresholds by name and the helpers in `helpers()` (`runbook("anchor")`
builds `<runbook_base_url>#anchor`; `humanize`, `humanize1024`, `humanize_percentage` and
`humanize_duration` format a number as Prometheus's template functions of those names do,
for the texts a promtool test expects). Numbers render in a stable, readable form: integral
values without `.0`, others with up to 12 significant digits.

    python scripts/rules.py                     # write prometheus/rules/, prometheus/tests/
    python scripts/rules.py --check             # exit 1 naming each stale file
    python scripts/rules.py --out DIR --set data_queue_min_files=5 \\
        --runbook-base-url https://wiki.example.org/tunewatch/runbook

`--out DIR` writes DIR/rules/ and DIR/tests/ (the tests' `../rules/` paths still hold), for
a deployment with its own thresholds or runbook address, or for a test.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("rules")

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "prometheus" / "templates"
DEFAULT_OUT = REPO / "prometheus"
# Template directory under SOURCE -> output directory under --out (same file names).
KINDS = ("rules", "tests")
TEMPLATE_SUFFIX = ".tmpl"  # templates/rules/x.yml.tmpl renders rules/x.yml
PLACEHOLDER = re.compile(r"<<\s*(.+?)\s*>>")
# Integral floats below this render as integers (float64 holds every integer up to 2^53).
EXACT_INTEGER_LIMIT = 2.0**53
SIGNIFICANT_DIGITS = 12
# Prometheus's humanize prefixes (template.go), larger and smaller than 1.
SI_LARGE = ("k", "M", "G", "T", "P", "E", "Z", "Y")
SI_SMALL = ("m", "u", "n", "p", "f", "a", "z", "y")
IEC_LARGE = ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi")
SECONDS_PER = {"d": 86400, "h": 3600, "m": 60}
# libyaml's loader where PyYAML has it: the rendered files are parsed once each, as a check.
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RulesError(Exception):
    """The source cannot be rendered; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Source:
    """What the templates are rendered with: the runbook address and the thresholds."""

    runbook_base_url: str
    thresholds: dict[str, float]


# --------------------------------------------------------------------------- numbers


def render_number(value: float) -> str:
    """A number as rules and tests show it: `2`, `0.97`, `10737418240`, never `2.0`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < EXACT_INTEGER_LIMIT:
        return str(int(value))
    return f"{value:.{SIGNIFICANT_DIGITS}g}"


def _go_g4(value: float) -> str:
    """Go's and Python's `%.4g` agree on finite numbers (both round half to even)."""
    return f"{value:.4g}"


def humanize(value: float) -> str:
    """Prometheus's `humanize`: SI prefixes, 4 significant digits (`1.5k`, `84`, `250m`)."""
    if value == 0 or not math.isfinite(value):
        return _go_g4(value)
    prefix = ""
    if abs(value) >= 1:
        for p in SI_LARGE:
            if abs(value) < 1000:
                break
            prefix, value = p, value / 1000
    else:
        for p in SI_SMALL:
            if abs(value) >= 1:
                break
            prefix, value = p, value * 1000
    return _go_g4(value) + prefix


def humanize1024(value: float) -> str:
    """Prometheus's `humanize1024`: binary prefixes (`30Gi`, `4.999Gi`)."""
    if abs(value) <= 1:
        return _go_g4(value)
    prefix = ""
    for p in IEC_LARGE:
        if abs(value) < 1024:
            break
        prefix = p
        value /= 1024
    return _go_g4(value) + prefix


def humanize_percentage(value: float) -> str:
    """Prometheus's `humanizePercentage`: a ratio as `97.5%`."""
    return _go_g4(value * 100) + "%"


def humanize_duration(seconds: float) -> str:
    """Prometheus's `humanizeDuration` for whole seconds of 1 and more (`1h 11m 0s`)."""
    if seconds < 1:
        raise ValueError("humanize_duration here covers durations of 1 s and more")
    whole = int(seconds)
    days, hours = whole // SECONDS_PER["d"], whole // SECONDS_PER["h"] % 24
    minutes, secs = whole // SECONDS_PER["m"] % 60, whole % 60
    if days:
        return f"{days}d {hours}h {minutes}m {secs}s"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def percent(ratio: float) -> str:
    """A ratio threshold as a rule's text shows it: 0.97 -> `97%`."""
    return render_number(float(f"{ratio * 100:.{SIGNIFICANT_DIGITS}g}")) + "%"


# --------------------------------------------------------------------------- source


def _number(name: str, value: Any, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RulesError(f"{origin}: threshold {name} must be a number, not {value!r}")
    if not math.isfinite(value):
        raise RulesError(f"{origin}: threshold {name} must be finite, not {value!r}")
    return value


def load_source(config: Path, *, runbook_base_url: str | None = None,
                overrides: Mapping[str, str] | None = None) -> Source:
    """The config file, with the command line's runbook address and `--set` values."""
    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    unknown = sorted(set(data) - {"runbook_base_url", "thresholds"})
    if unknown:
        raise RulesError(f"{config}: unknown keys {unknown}")
    base = runbook_base_url if runbook_base_url is not None else data.get("runbook_base_url")
    if not isinstance(base, str) or not base:
        raise RulesError(f"{config}: runbook_base_url must be a non-empty string")
    raw = data.get("thresholds") or {}
    if not isinstance(raw, dict):
        raise RulesError(f"{config}: thresholds must be a mapping of name: number")
    thresholds = {str(k): _number(str(k), v, str(config)) for k, v in raw.items()}
    for name, text in (overrides or {}).items():
        if name not in thresholds:
            raise RulesError(f"--set {name}: no such threshold in {config} "
                             f"(known: {', '.join(sorted(thresholds))})")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RulesError(f"--set {name}={text}: not a number") from exc
        thresholds[name] = _number(name, value, f"--set {name}={text}")
    return Source(base.rstrip("#"), thresholds)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`--set name=value` arguments as a mapping; a pair without `=` is an error."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise RulesError(f"--set {pair}: expected name=value")
        out[name.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- rendering


def helpers(source: Source) -> dict[str, Callable[..., Any]]:
    """The functions a placeholder may call, besides a few plain builtins."""
    return {
        "runbook": lambda anchor: f"{source.runbook_base_url}#{anchor}",
        "percent": percent,
        "humanize": humanize,
        "humanize1024": humanize1024,
        "humanize_percentage": humanize_percentage,
        "humanize_duration": humanize_duration,
        "abs": abs, "int": int, "round": round, "min": min, "max": max,
    }


def _render_value(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return render_number(value)
    except (TypeError, ValueError) as exc:
        raise RulesError(f"{where}: {exc}") from exc


def render_text(text: str, source: Source, origin: str,
                used: set[str] | None = None) -> str:
    """One template with every placeholder replaced; `used` collects the thresholds read."""
    namespace: dict[str, Any] = {**helpers(source), **source.thresholds}

    def replace(match: re.Match[str]) -> str:
        expression = match.group(1)
        line = text.count("\n", 0, match.start()) + 1
        where = f"{origin}:{line}: << {expression} >>"
        try:
            code = compile(expression, where, "eval")
            value = eval(code, {"__builtins__": {}}, namespace)
        except Exception as exc:  # any error in a template expression names its place
            raise RulesError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if used is not None:
            used.update(n for n in code.co_names if n in source.thresholds)
        return _render_value(value, where)

    return PLACEHOLDER.sub(replace, text)


def header(template: Path, source_dir: Path) -> str:
    """The first line of a generated file: where it comes from, and where to edit."""
    try:
        shown = template.relative_to(REPO)
        config = (source_dir / "config.yml").relative_to(REPO)
    except ValueError:
        shown, config = template, source_dir / "config.yml"
    return (f"# generated by `make rules` from {shown.as_posix()} and {config.as_posix()}; "
            "edit there.\n")


def render(source: Source, source_dir: Path = SOURCE) -> dict[str, str]:
    """Relative output path (rules/x.yml, tests/x.test.yml) -> its text, for every template.

    Every threshold must be read by some template: one that none reads is a leftover.
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for kind in KINDS:
        for template in sorted((source_dir / kind).glob(f"*.yml{TEMPLATE_SUFFIX}")):
            text = render_text(template.read_text(encoding="utf-8"), source,
                               str(template), used)
            try:
                yaml.load(text, Loader=YAML_LOADER)  # a safe loader (C or Python)
            except yaml.YAMLError as exc:
                raise RulesError(f"{template}: renders to invalid YAML: {exc}") from exc
            out[f"{kind}/{template.name.removesuffix(TEMPLATE_SUFFIX)}"] = (
                header(template, source_dir) + text)
    unused = sorted(set(source.thresholds) - used)
    if unused:
        raise RulesError(f"thresholds no template reads: {', '.join(unused)}")
    return out


def stale_files(rendered: Mapping[str, str], out: Path) -> list[str]:
    """Files that differ from the rendering, are missing, or have no template."""
    stale = [str(out / rel) for rel, text in rendered.items()
             if not (out / rel).exists() or (out / rel).read_text(encoding="utf-8") != text]
    for kind in KINDS:
        for path in sorted((out / kind).glob("*.yml")):
            if f"{kind}/{path.name}" not in rendered:
                stale.append(f"{path} (no {path.name}{TEMPLATE_SUFFIX} in"
                             f" prometheus/templates/{kind}/)")
    return stale


def write(rendered: Mapping[str, str], out: Path) -> None:
    """Write every rendered file; warn about files there that no template renders (they
    would load into Prometheus unchecked), without deleting anything."""
    for rel, text in rendered.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for extra in stale_files(rendered, out):
        log.warning("not generated, delete it or move it to prometheus/templates/: %s", extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help="the rules source: config.yml, rules/, tests/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="writes OUT/rules/ and OUT/tests/ (default: prometheus/)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the files instead of writing them")
    parser.add_argument("--runbook-base-url", default=None,
                        help="address of docs/runbook.md, instead of config.yml's")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="NAME=VALUE", help="a threshold instead of config.yml's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        source = load_source(args.source / "config.yml", runbook_base_url=args.runbook_base_url,
                             overrides=parse_sets(args.sets))
        rendered = render(source, args.source)
    except RulesError as exc:
        log.error("%s", exc)
        return 2
    if args.check:
        stale = stale_files(rendered, args.out)
        if stale:
            log.error("out of date (run `make rules`): %s", ", ".join(stale))
            return 1
        return 0
    write(rendered, args.out)
    log.info("wrote %d files under %s", len(rendered), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
