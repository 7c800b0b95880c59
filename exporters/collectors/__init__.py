"""The host exporter's collectors, one source each: gpu (a package), process, files.

procenv.py is not a collector: it reads a process's run and ranks for gpu and process.
Each collector module provides `create_collector(cfg: ExporterConfig)` returning an object
with `name`, `collect()` and `close()` (see exporters/framework.py). Modules are imported
only when their collector is enabled, so a host without NVML never imports it.
"""

COLLECTORS: dict[str, str] = {
    "gpu": "exporters.collectors.gpu",
    "process": "exporters.collectors.process",
    "files": "exporters.collectors.files",
}
