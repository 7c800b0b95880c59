"""The host exporter's collectors, one source per module (gpu, process, files).

Each module provides `create_collector(cfg: ExporterConfig)` returning an object with
`name`, `collect()` and `close()` (see exporters/framework.py). Modules are imported only
when their collector is enabled, so a host without NVML never imports it.
"""

COLLECTORS: dict[str, str] = {
    "gpu": "exporters.collectors.gpu",
    "process": "exporters.collectors.process",
    "files": "exporters.collectors.files",
}
