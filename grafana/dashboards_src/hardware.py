"""Hardware dashboard: the training host and the eval host side by side.

Why side by side: the seeds' incidents were comparisons (the eval GPU full while the
trainer idles, one host's disk filling). Every panel repeats horizontally over the `role`
variable (training | eval, the target label Prometheus attaches), so the same query shows
each host kind in its own column. GPU panels read tunewatch_gpu_* series, which come from
the host exporter or, on a dcgm-exporter fleet, from prometheus/rules/dcgm.rules.yml.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from .common import (
    Layout,
    datasource_variable,
    new_dashboard,
    query_variable,
    runbook_link,
    stat_panel,
    target,
    thresholds,
    ts,
)

S = 'role="$role", host=~"$host"'  # the selector every hardware query carries
GPU_LEGEND = "{{host}} GPU {{gpu}}"
W, H = 12, 8  # one column per role (two side by side)
NODE_FS = ('fstype!~"tmpfs|ramfs|squashfs|nsfs|devtmpfs|fuse.lxcfs", '
           'mountpoint!~"/run.*|/proc.*|/sys.*|/dev.*"')


def role_variable() -> db.CustomVariable:
    """training and eval (target labels); All shows both columns."""
    return (db.CustomVariable("role").label("Role").values("training,eval").multi(True)
            .include_all(True).current(dm.VariableOption(selected=True, text="All",
                                                         value="$__all")))


def _repeat(panel: object) -> object:
    """One copy of the panel per role, side by side."""
    return panel.repeat("role").repeat_direction("h").max_per_row(2)  # type: ignore[attr-defined]


def build() -> db.Dashboard:
    """The Hardware dashboard."""
    d = new_dashboard("hardware", "tunewatch / Hardware",
                      "GPUs, processes, storage and host resources of the training and eval "
                      "hosts, side by side (role variable).")
    d.with_variable(datasource_variable())
    d.with_variable(role_variable())
    d.with_variable(query_variable("host", "Host", 'label_values(up{role=~"$role"}, host)',
                                   multi=True, include_all=True))
    lay = Layout(d)

    def add(panel: object, h: int = H) -> None:
        lay.add(_repeat(panel), W, h, copies=2)

    lay.row("GPU")
    add(ts("GPU utilization ($role)",
           "Fraction of time a kernel ran on the GPU (NVML utilization). Low while training "
           "means the input pipeline or the host starves the GPU.",
           "percentunit",
           [target(f"tunewatch_gpu_utilization_ratio{{{S}}}", GPU_LEGEND)],
           thresholds(0.7, 0.3, higher_is_worse=False), min_val=0, max_val=1))
    add(ts("GPU memory used and peak ($role)",
           "Device memory in use and the highest use seen between two scrapes (the peak "
           "catches the spikes that cause OOMs), as a fraction of the installed memory.",
           "percentunit",
           [target(f"tunewatch_gpu_memory_used_bytes{{{S}}} / "
                   f"tunewatch_gpu_memory_total_bytes{{{S}}}", f"{GPU_LEGEND} used"),
            target(f"tunewatch_gpu_memory_used_peak_bytes{{{S}}} / "
                   f"tunewatch_gpu_memory_total_bytes{{{S}}}", f"{GPU_LEGEND} peak", "B")],
           thresholds(0.85, 0.95), [runbook_link("gpumemorynearlyfull")], 0, 1,
           show_thresholds=True))
    add(ts("GPU temperature ($role)",
           "Core temperature, with the temperature at which the GPU slows its clocks "
           "(its own limit, not a fixed number).",
           "celsius",
           [target(f"tunewatch_gpu_temperature_celsius{{{S}}}", GPU_LEGEND),
            target(f"tunewatch_gpu_temperature_slowdown_celsius{{{S}}}",
                   f"{GPU_LEGEND} slowdown limit", "B")],
           thresholds(80, 85), [runbook_link("gputemperaturehigh")]))
    add(ts("GPU power ($role)",
           "Board power draw and the enforced power limit; running at the limit with "
           "clocks down is power capping (see throttling).",
           "watt",
           [target(f"tunewatch_gpu_power_watts{{{S}}}", GPU_LEGEND),
            target(f"tunewatch_gpu_power_limit_watts{{{S}}}", f"{GPU_LEGEND} limit", "B")],
           thresholds(90, 98, percentage=True)))
    add(ts("GPU clocks ($role)",
           "SM and memory clocks. SM clock dropping under load with throttling active "
           "means thermal or power limits.",
           "hertz",
           [target(f"tunewatch_gpu_sm_clock_hz{{{S}}}", f"{GPU_LEGEND} SM"),
            target(f"tunewatch_gpu_memory_clock_hz{{{S}}}", f"{GPU_LEGEND} memory", "B")],
           thresholds(90, 98, percentage=True)))
    add(ts("GPU throttling ($role)",
           "Fraction of time clocks were held below target, by reason (NVML violation "
           "counters, rate over $__rate_interval).",
           "percentunit",
           [target("sum by (host, gpu, reason) (rate(tunewatch_gpu_throttled_seconds_total"
                   f"{{{S}}}[$__rate_interval]))", "{{host}} GPU {{gpu}} {{reason}}")],
           thresholds(0.05, 0.2), [runbook_link("gputhrottled")], 0, 1))
    add(ts("GPU XID errors ($role)",
           "XID critical errors reported by the driver since the exporter started, by code "
           "(79: fell off the bus, 48: double-bit ECC, 31: MMU fault, 13: engine "
           "exception). Any XID deserves a look.",
           "short",
           [target(f"sum by (host, gpu, xid) (tunewatch_gpu_xid_errors_total{{{S}}})",
                   "{{host}} GPU {{gpu}} XID {{xid}}")],
           thresholds(1, 5), [runbook_link("gpuxiderrors")]))
    add(ts("GPU memory per process ($role)",
           "GPU memory of each compute process (largest first, capped per GPU), with its "
           "run and rank from the process environment.",
           "bytes",
           [target(f"tunewatch_gpu_process_memory_used_bytes{{{S}}}",
                   "{{host}} GPU {{gpu}} {{process}} {{pid}} {{run}}")],
           thresholds(85, 95, percentage=True)))

    lay.row("Host")
    add(ts("CPU busy ($role)",
           "Fraction of CPU time not idle, all cores (node_exporter). A data loader bound "
           "by CPU shows here while GPU utilization drops.",
           "percentunit",
           [target("1 - avg by (host) (rate(node_cpu_seconds_total{mode=\"idle\", "
                   f"{S}}}[$__rate_interval]))", "{{host}}")],
           thresholds(0.8, 0.95), min_val=0, max_val=1))
    add(ts("Memory used ($role)",
           "Host RAM in use (1 - available / total, node_exporter).",
           "percentunit",
           [target(f"1 - node_memory_MemAvailable_bytes{{{S}}} / "
                   f"node_memory_MemTotal_bytes{{{S}}}", "{{host}}")],
           thresholds(0.85, 0.95), min_val=0, max_val=1))
    add(ts("Disk used ($role)",
           "Filesystem space in use per mount point (node_exporter), pseudo filesystems "
           "left out.",
           "percentunit",
           [target(f"1 - node_filesystem_avail_bytes{{{S}, {NODE_FS}}} / "
                   f"node_filesystem_size_bytes{{{S}, {NODE_FS}}}", "{{host}} {{mountpoint}}")],
           thresholds(0.85, 0.95), [runbook_link("disknearlyfull")], 0, 1))
    add(ts("Watched processes: memory ($role)",
           "Resident memory of the processes the host exporter watches (trainer, evaluator, "
           "sidecar), by pid.",
           "bytes",
           [target(f"tunewatch_process_resident_memory_bytes{{{S}}}",
                   "{{host}} {{process}} {{pid}}")],
           thresholds(85, 95, percentage=True)))
    add(ts("Watched processes: CPU ($role)",
           "CPU cores used by each watched process (rate of user plus system time).",
           "short",
           [target(f"rate(tunewatch_process_cpu_seconds_total{{{S}}}[$__rate_interval])",
                   "{{host}} {{process}} {{pid}}")],
           thresholds(4, 8)))
    add(ts("Checkpoint storage ($role)",
           "Bytes in checkpoint directories and bytes still free on their filesystem.",
           "bytes",
           [target(f"tunewatch_files_checkpoint_bytes{{{S}}}", "{{host}} checkpoints"),
            target(f"tunewatch_files_checkpoint_filesystem_free_bytes{{{S}}}",
                   "{{host}} free", "B")],
           thresholds(85, 95, percentage=True), [runbook_link("disknearlyfull")]))
    add(stat_panel("Exporter collectors ($role)",
                   "1 if the host exporter's collector answered its last scrape in time; 0 "
                   "means its series are missing or stale (the log says why).",
                   "bool_yes_no",
                   [target(f"tunewatch_exporter_collector_success{{{S}}}",
                           "{{host}} {{collector}}", instant=True)],
                   thresholds(1, 0.5, higher_is_worse=False)), h=4)
    return d
