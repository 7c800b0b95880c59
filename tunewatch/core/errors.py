"""The errors every layer may raise for a user to read: one line, no traceback.

Why in the base: libraries (the evaluator, the exporters) find what a user asked for is
impossible (a flag against the configuration, an unknown checkpoint), and the command layer
turns these into exit status 2. Defining them in the command dispatcher made every library
import the command line; here they depend on nothing.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with what the user asked for: one line, exit status 2, no traceback."""


class ConfigError(ValueError):
    """A configuration problem; the message names the key and where it came from."""
