"""Which run and rank a process belongs to, read from the environment it started with.

Why one place: every process of a run (trainer ranks, sidecar, evaluator) carries
`TUNEWATCH_RUN`, and torch.distributed launchers set `RANK` and `LOCAL_RANK`; both the
process collector (`tunewatch_process_info`) and the GPU collector's per-process memory
(`tunewatch_gpu_process_memory_used_bytes`) label a process with them, and must agree on
which variables mean what:

    run_labels(psutil.Process(4242))  ->  {"run": "r7", "rank": "0", "local_rank": "0"}

A variable that is not set gives "" (an empty label value, as Prometheus treats a missing
label). Reading another user's environment needs privileges, so psutil's AccessDenied and
NoSuchProcess are left to the caller, which knows whether they are worth counting.
"""

from __future__ import annotations

import psutil

# label -> environment variable
ENV_KEYS: dict[str, str] = {"run": "TUNEWATCH_RUN", "rank": "RANK", "local_rank": "LOCAL_RANK"}


def run_labels(proc: psutil.Process) -> dict[str, str]:
    """run, rank and local_rank of a live process; {} when its environment is empty
    (a process caught between fork and exec, or a kernel thread).

    Raises psutil.NoSuchProcess, psutil.AccessDenied (and OSError) as psutil does.
    """
    environ = proc.environ()
    if not environ:
        return {}
    return {label: environ.get(var, "") for label, var in ENV_KEYS.items()}
