"""Training metrics (DESIGN section 9, port 9946) from any trainer.

- `PrometheusCallback`: a transformers TrainerCallback serving /metrics from the trainer.
- `TrainingMetrics`: the same metrics for a hand-written loop (`update(step=..., loss=...)`;
  `set_model_size(*count_parameters(model))` for the model size the MFU rule needs).
- `StatusFileCollector` (exporters.training.status_collector, run by `tunewatch
  training-sidecar`): the same from a trainer's status file.

PrometheusCallback is imported lazily so that the framework-free parts do not import
transformers.
"""

from __future__ import annotations

from typing import Any

from exporters.training.metrics import STATES, TrainingMetrics, count_parameters

__all__ = ["STATES", "PrometheusCallback", "TrainingMetrics", "count_parameters", "serve"]


def __getattr__(name: str) -> Any:
    if name == "PrometheusCallback":
        from exporters.training.callback import PrometheusCallback

        return PrometheusCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(metrics: TrainingMetrics, listen_address: str = "127.0.0.1:9946",
          web_config_file: str = "") -> Any:
    """Serve `metrics` on /metrics in a background thread; returns the MetricsServer.

    For hand-written loops: `server = serve(metrics)`, then `server.stop()` at the end.
    """
    from prometheus_client import CollectorRegistry

    from exporters.server import ServerOptions, start_server

    registry = CollectorRegistry()
    registry.register(metrics)
    return start_server(registry, listen_address, web_config_file,
                        ServerOptions(title="tunewatch training metrics"))
