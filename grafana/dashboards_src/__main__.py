"""Write grafana/dashboards/*.json from the dashboard modules (`make dashboards`).

Why a --check mode: CI (and tests/test_dashboards.py) must fail when someone edits the
JSON by hand or changes the code without regenerating; `--check` exits 1 naming the file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db

from . import evaluation, hardware, overview, predictions, training
from .common import to_json

BUILDERS: dict[str, Callable[[], db.Dashboard]] = {
    "overview": overview.build,
    "training": training.build,
    "hardware": hardware.build,
    "evaluation": evaluation.build,
    "predictions": predictions.build,
}
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "dashboards"


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": to_json(build()) for name, build in BUILDERS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true",
                        help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date (run `make dashboards`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
