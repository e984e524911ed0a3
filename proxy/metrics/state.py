"""What a scrape needs of each connector's state, without ``prometheus-client``: that is
imported at the first scrape only (:mod:`proxy.metrics.exposition`), not by every worker
at start (~80 ms of import, ~0.6 MB)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

StateOf = dict[str, dict[str, Any]]
"""Per connector: ``expires_at`` (wall clock, or None) and ``backing_off`` (0 or 1)."""


def connector_state(described: Mapping[str, Mapping[str, Any]], now_wall: float) -> StateOf:
    """The gauges' inputs from each connector's ``describe()``."""
    state: StateOf = {}
    for name, info in described.items():
        expires_in = info.get("expires_in")
        state[name] = {
            "expires_at": None if expires_in is None else now_wall + expires_in,
            "backing_off": int(info.get("state") in _WAITING),
        }
    return state


_WAITING = frozenset({"failing", "needs_authorization", "needs_refresh_token"})
