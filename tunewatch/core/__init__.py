"""The base layer: configuration, errors and logging, shared by every tunewatch process.

It imports nothing else of tunewatch, exporters or evaluators (an import-linter contract in
pyproject.toml, checked by `make test`).
"""
