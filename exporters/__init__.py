"""Everything in tunewatch that serves /metrics: the shared server, the collector framework,
the host exporter's collectors and the training metrics."""
