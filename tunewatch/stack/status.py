"""The stack's one-line status, read from Prometheus itself.

Why from Prometheus: "targets up 4/4 | firing: Watchdog" is what a newcomer needs to know
while `make up` runs, and Prometheus is the one that knows which targets it reaches and
which alerts fire; asking it also proves the scrape path works end to end.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any


def prom_query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query against the Prometheus at `base`."""
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=3) as resp:
        return list(json.loads(resp.read())["data"]["result"])


def status_line(prom_url: str, extra: Callable[[str], str] | None = None) -> str:
    """`targets up 4/4 | firing: Watchdog` from Prometheus itself."""
    try:
        ups = prom_query(prom_url, "up")
        firing = prom_query(prom_url, 'ALERTS{alertstate="firing"}')
    except (OSError, ValueError, KeyError) as exc:
        return f"prometheus not answering ({exc})"
    up = sum(1 for r in ups if r["value"][1] == "1")
    down = sorted(r["metric"].get("job", "?") for r in ups if r["value"][1] != "1")
    names = sorted({r["metric"].get("alertname", "?") for r in firing})
    line = f"targets up {up}/{len(ups)}"
    if down:
        line += f" (down: {', '.join(down)})"
    line += f" | firing: {', '.join(names) if names else 'none'}"
    if extra:
        line += extra(prom_url)
    return line
