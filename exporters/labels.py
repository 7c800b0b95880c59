"""Bounding label values that come from outside the code (run names, status-file texts).

Why: a label value is part of a series' identity and is stored in every sample's index
entry. A run name or a model path taken from an environment variable or a trainer's status
file can be kilobytes long or hold control characters (a pasted traceback, a prompt); that
must neither bloat the TSDB nor break a dashboard legend. Values are kept readable: control
characters become a space, runs of whitespace collapse, and anything past MAX_LENGTH
characters is cut with a marker, so two long values with the same prefix stay distinct only
if they differ early (cardinality is bounded, not preserved).
"""

from __future__ import annotations

import re

MAX_LENGTH = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"\s{2,}")
_MARK = "..."


def bounded_label_value(value: object, limit: int = MAX_LENGTH) -> str:
    """`value` as a label value: no control characters, at most `limit` characters."""
    text = _SPACES.sub(" ", _CONTROL.sub(" ", str(value))).strip()
    if len(text) > limit:
        text = text[: limit - len(_MARK)] + _MARK
    return text
