"""What the proxy counts, in plain Python on the hot path: one dictionary update or a bisect
per event, no locks (one event loop per process), no label objects.

Counters and histograms live in :data:`METRICS` (one per process). A scrape turns them into
Prometheus families (:mod:`proxy.metrics.exposition`); with ``--workers N`` each worker also
writes a snapshot of them for the others to add up (:mod:`proxy.metrics.workers`), which is
how one scrape covers every worker.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

# Seconds: a proxied request is milliseconds; token endpoints and slow upstreams, seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-on-export histogram: per-bucket counts, sum and count."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def dump(self) -> list[Any]:
        return [self.counts, self.total]

    def add(self, dumped: list[Any]) -> None:
        counts, total = dumped
        for index, count in enumerate(counts):
            self.counts[index] += count
        self.total += total


class Metrics:
    """The counters of one process. Keys are label values: ``(connector, status)`` for
    requests, ``(connector, outcome)`` for token requests, ``connector`` otherwise. A
    ``per_client`` token counts under ``connector/client``."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.request_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.upstream_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.token_requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.token_seconds: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.cache: defaultdict[tuple[str, str], int] = defaultdict(int)
        """``(connector, "hit"|"miss")``: a request served from the held token, or not."""
        self.store: defaultdict[tuple[str, str], int] = defaultdict(int)
        """``(connector, "hit"|"miss")``: a token taken from the store, or fetched."""
        self.upstream_retries: defaultdict[tuple[str, str], int] = defaultdict(int)
        """``(connector, reason)``: sends after the first (``connect``, a status, ``reauth``)."""
        self.client_requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        """``(connector, client)``: requests of the clients named in ``clients.api_keys``."""
        self.in_flight = 0

    def request_done(self, connector: str, status: int, seconds: float) -> None:
        self.requests[connector, str(status)] += 1
        self.request_seconds[connector].observe(seconds)

    def dump(self) -> dict[str, Any]:
        """A JSON-able copy of every counter (another worker adds it to its own)."""
        return {
            "requests": [[*key, value] for key, value in self.requests.items()],
            "request_seconds": {k: h.dump() for k, h in self.request_seconds.items()},
            "upstream_seconds": {k: h.dump() for k, h in self.upstream_seconds.items()},
            "token_requests": [[*key, value] for key, value in self.token_requests.items()],
            "token_seconds": {k: h.dump() for k, h in self.token_seconds.items()},
            "cache": [[*key, value] for key, value in self.cache.items()],
            "store": [[*key, value] for key, value in self.store.items()],
            "upstream_retries": [[*key, value] for key, value in self.upstream_retries.items()],
            "client_requests": [[*key, value] for key, value in self.client_requests.items()],
            "in_flight": self.in_flight,
        }

    def add(self, dumped: dict[str, Any]) -> None:
        """Add another worker's :meth:`dump` to these counters."""
        for name in (
            "requests",
            "token_requests",
            "cache",
            "store",
            "upstream_retries",
            "client_requests",
        ):
            table = getattr(self, name)
            for first, second, value in dumped.get(name, ()):
                table[first, second] += value
        for name in ("request_seconds", "upstream_seconds", "token_seconds"):
            histograms = getattr(self, name)
            for key, value in dumped.get(name, {}).items():
                histograms[key].add(value)
        self.in_flight += dumped.get("in_flight", 0)


METRICS = Metrics()
"""This process's counters."""
