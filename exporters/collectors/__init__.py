"""The host exporter's collectors, one source per module (gpu, process, files)."""
