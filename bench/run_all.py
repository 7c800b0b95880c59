"""Run every benchmark in bench/ (`make bench`) and print one summary at the end.

Why a runner rather than a list in the Makefile: a benchmark added as `bench/bench_<name>.py`
is picked up without touching anything else, and one failing benchmark does not hide the
figures of the others; the exit status is non-zero when any of them failed.

    python bench/run_all.py                 # all of them
    python bench/run_all.py eval exporter   # only bench_eval.py and bench_exporter.py
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
log = logging.getLogger("bench")


def discover(names: list[str]) -> list[Path]:
    """The benchmark scripts to run: all `bench_*.py`, or the ones named on the command line."""
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if not names:
        return scripts
    wanted = {f"bench_{name}.py" for name in names}
    unknown = wanted - {s.name for s in scripts}
    if unknown:
        raise SystemExit(f"bench: no such benchmark: {', '.join(sorted(unknown))}")
    return [s for s in scripts if s.name in wanted]


def run_one(script: Path) -> tuple[int, float]:
    """Run one benchmark with this interpreter, its output going straight to the terminal."""
    log.info("running %s", script.name)
    start = time.perf_counter()
    rc = subprocess.call([sys.executable, str(script)])
    return rc, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and summarise; exit 1 if any of them failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmark names (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results = [(script.name, *run_one(script)) for script in discover(args.names)]
    for name, rc, seconds in results:
        log.info("%-28s %s in %.1f s", name, "ok" if rc == 0 else f"FAILED (exit {rc})", seconds)
    return 1 if any(rc for _, rc, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
