"""Predictions: the texts of a fixed sample of examples kept for every evaluated checkpoint.

Why a database and not Prometheus: prompts and answers are text, and text in labels would
explode the series count. The evaluator daemon hands each successful evaluation to a
`Recorder` (recorder.py) that writes rows to a `Store` (store.py: SQLite by default,
PostgreSQL by URL, schema versioned in schema.py) off the evaluation thread; rows that
cannot be written wait in a spool file (spool.py) and are flushed later under idempotent
keys. `tunewatch predictions` lists, follows and exports them (query.py, export.py) and
estimates their cost (cost.py), and Grafana's predictions dashboard reads PostgreSQL
through a read-only role. docs/predictions.md.
"""

from evaluators.predictions.recorder import Recorder
from evaluators.predictions.store import Filters, Store, StoreError, open_store

__all__ = ["Filters", "Recorder", "Store", "StoreError", "open_store"]
