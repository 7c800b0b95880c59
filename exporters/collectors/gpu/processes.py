"""Who a GPU process is: its name, run and ranks, looked up with psutil by pid.

Why apart from the NVML reader: NVML gives only a pid and its memory; the name comes from
psutil and the run and ranks from the process's environment (exporters/collectors/
procenv.py, shared with the process collector), which needs no GPU to test.
"""

from __future__ import annotations

import psutil

from exporters.collectors.procenv import run_labels


class ProcessDescriber:
    """pid -> name, run, rank, local_rank from psutil, cached per process lifetime.

    Why a cache: reading /proc/<pid>/environ every scrape for every GPU process is wasted
    work (the environment a process started with does not change); the key includes the
    create time so a recycled pid is described afresh.
    """

    def __init__(self) -> None:
        self._cache: dict[int, tuple[float, tuple[str, str, str, str]]] = {}

    def describe(self, pid: int) -> tuple[str, str, str, str]:
        try:
            proc = psutil.Process(pid)
            created = proc.create_time()
        except (psutil.Error, OSError):
            return ("", "", "", "")  # not visible (other pid namespace) or gone
        cached = self._cache.get(pid)
        if cached and cached[0] == created:
            return cached[1]
        labels = _run_labels(proc)
        info = (_safe_name(proc), labels.get("run", ""), labels.get("rank", ""),
                labels.get("local_rank", ""))
        if labels:  # an empty environment may be a process caught mid-exec: ask again later
            self._cache[pid] = (created, info)
        return info

    def forget_except(self, pids: set[int]) -> None:
        """Drop processes no longer on any GPU so the cache stays bounded."""
        for pid in set(self._cache) - pids:
            del self._cache[pid]


def _safe_name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except (psutil.Error, OSError):
        return ""


def _run_labels(proc: psutil.Process) -> dict[str, str]:
    try:
        return run_labels(proc)
    except (psutil.Error, OSError):
        return {}  # AccessDenied for other users' processes unless root
