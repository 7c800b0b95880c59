"""The cardinality budget: series per GPU, per host, per run and per checkpoint, for a fleet.

Why computed from real outputs: a budget written by hand is wrong the day a collector gains
a metric. This reads the expositions the real processes published (recorded in
tests/fixtures/fleet/: the host exporter with 8 GPUs, the training sidecar, the evaluator
after three evaluated checkpoints, node_exporter), sorts every series into what it scales
with, and multiplies out for a fleet size. docs/scale.md quotes its output.

    python scripts/cardinality.py --nodes 64 --gpus 8 --runs 1 --eval-hosts 2
    python scripts/cardinality.py --nodes 64 --gpus 8 --json

Classes: a series with a `gpu` label scales per GPU; one with a `checkpoint` label per kept
checkpoint (last K, evaluator.last_k); the rest of the host exporter and node_exporter per
host, of the training metrics per training node, of the evaluator per eval host. Each
target adds Prometheus's 5 synthetic series (up, scrape_*). Memory is estimated at
`--bytes-per-series` (default 8 KiB, a conservative figure for Prometheus 2.x head series
with 15 s scrapes; bench/bench_fleet.py measures the real one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "tests" / "fixtures" / "fleet"
SYNTHETIC_PER_TARGET = 5  # up, scrape_duration_seconds, scrape_samples_scraped, ...
log = logging.getLogger("cardinality")


@dataclass
class Profile:
    """Series counts of one recorded exposition, by what they scale with."""

    name: str
    total: int
    per_gpu: float  # series with a gpu label, divided by the GPUs in the recording
    per_checkpoint: float  # series with a checkpoint label, divided by the checkpoints
    fixed: int  # the rest: per process (host, training node or eval host)


def series(text: str) -> list[dict[str, str]]:
    """Label sets of every sample line of an exposition."""
    return [dict(s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples]


def profile(name: str, text: str) -> Profile:
    rows = series(text)
    gpus = {r["gpu"] for r in rows if "gpu" in r}
    checkpoints = {r["checkpoint"] for r in rows if "checkpoint" in r}
    with_gpu = sum(1 for r in rows if "gpu" in r)
    with_ckpt = sum(1 for r in rows if "checkpoint" in r and "gpu" not in r)
    return Profile(name, len(rows), with_gpu / len(gpus) if gpus else 0.0,
                   with_ckpt / len(checkpoints) if checkpoints else 0.0,
                   len(rows) - with_gpu - with_ckpt)


def load_profiles(directory: Path = SAMPLES) -> dict[str, Profile]:
    """exporter, training, evaluator, node -> Profile (from <directory>/<name>.txt)."""
    return {p.stem: profile(p.stem, p.read_text(encoding="utf-8"))
            for p in sorted(directory.glob("*.txt"))}


def budget(profiles: dict[str, Profile], *, nodes: int, gpus: int, runs: int = 1,
           eval_hosts: int = 0, last_k: int = 5, bytes_per_series: int = 8192) -> dict:
    """Active series of the fleet, by source, with the per-unit figures it was built from."""
    exp, trn = profiles["exporter"], profiles["training"]
    ev, node = profiles.get("evaluator"), profiles.get("node")
    hosts = nodes + eval_hosts
    node_fixed = node.fixed if node else 0
    rows = {
        "gpu (host exporter)": nodes * gpus * exp.per_gpu,
        "host exporter, per host": hosts * exp.fixed,
        "node_exporter, per host": hosts * node_fixed,
        "training metrics, per training node": nodes * trn.fixed,
        "evaluator, per eval host": eval_hosts * (ev.fixed if ev else 0),
        "evaluator ranking, last K checkpoints": eval_hosts * last_k
        * (ev.per_checkpoint if ev else 0),
        "synthetic (up, scrape_*)": SYNTHETIC_PER_TARGET
        * (hosts * 2 + nodes + eval_hosts),
    }
    total = round(sum(rows.values()))
    return {
        "fleet": {"nodes": nodes, "gpus_per_node": gpus, "runs": runs,
                  "eval_hosts": eval_hosts, "last_k": last_k},
        "per_unit": {
            "series_per_gpu": exp.per_gpu,
            "series_per_host_exporter": exp.fixed,
            "series_per_node_exporter": node_fixed,
            "series_per_training_node": trn.fixed,
            "series_per_eval_host": ev.fixed if ev else None,
            "series_per_checkpoint": ev.per_checkpoint if ev else None,
        },
        "series": {k: round(v) for k, v in rows.items()},
        "total_series": total,
        "total_without_node_exporter": total - round(hosts * node_fixed),
        "estimated_memory_bytes": total * bytes_per_series,
        "profiles": {k: asdict(v) for k, v in profiles.items()},
    }


def as_text(b: dict) -> str:
    f = b["fleet"]
    lines = [f"fleet: {f['nodes']} training nodes x {f['gpus_per_node']} GPUs, "
             f"{f['eval_hosts']} eval hosts, last_k {f['last_k']}"]
    lines += [f"  {k:<40} {v:>10,}" for k, v in b["series"].items()]
    lines.append(f"  {'total active series':<40} {b['total_series']:>10,}")
    lines.append(f"  {'  of which ours (no node_exporter)':<40} "
                 f"{b['total_without_node_exporter']:>10,}")
    lines.append(f"  {'estimated Prometheus memory (MiB)':<40} "
                 f"{b['estimated_memory_bytes'] / 2**20:>10,.0f}")
    u = b["per_unit"]
    lines.append("per unit: " + ", ".join(f"{k} {v:g}" for k, v in u.items() if v is not None))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=64, help="training nodes (default 64)")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--runs", type=int, default=1, help="concurrent runs (default 1)")
    parser.add_argument("--eval-hosts", type=int, default=1, help="eval hosts (default 1)")
    parser.add_argument("--last-k", type=int, default=5, help="evaluator.last_k (default 5)")
    parser.add_argument("--bytes-per-series", type=int, default=8192)
    parser.add_argument("--samples", type=Path, default=SAMPLES,
                        help="directory of recorded expositions (default %(default)s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profiles = load_profiles(args.samples)
    missing = {"exporter", "training"} - set(profiles)
    if missing:
        log.error("cardinality: %s lacks %s", args.samples,
                  ", ".join(f"{m}.txt" for m in sorted(missing)))
        return 2
    b = budget(profiles, nodes=args.nodes, gpus=args.gpus, runs=args.runs,
               eval_hosts=args.eval_hosts, last_k=args.last_k,
               bytes_per_series=args.bytes_per_series)
    sys.stdout.write(json.dumps(b, indent=2) + "\n" if args.json else as_text(b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
