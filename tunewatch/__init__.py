"""tunewatch: shared pieces (CLI, configuration, logging, local stack, tiny demo model).

The metric-producing code lives in the `exporters` package (host exporter, training
metrics) and the `evaluators` package (checkpoint evaluation).
"""

__version__ = "0.1.0"
