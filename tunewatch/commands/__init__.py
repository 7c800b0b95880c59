"""The command layer: one module per `tunewatch` subcommand, named after it.

Each module parses its own flags (`add_arguments`) and runs (`run(args, cfg) -> int`), and
nothing more: what a command does lives in the libraries below it (exporters/, evaluators/,
tunewatch's applications, tunewatch/core/). Nothing below imports this package (an
import-linter contract in pyproject.toml, checked by `make test`).
"""
