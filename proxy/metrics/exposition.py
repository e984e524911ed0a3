"""``GET {admin.prefix}/metrics``: the Prometheus text format, made by ``prometheus-client``
from this process's counters, the other workers' snapshots, and the state of each connector
read at scrape time (never a token or a secret: names, numbers and states only).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proxy.metrics.registry import BUCKETS, Histogram, Metrics
from proxy.metrics.state import StateOf


def render(
    metrics: Metrics,
    state: Iterable[StateOf],
    store: tuple[str, bool] | None,
) -> bytes:
    """The scrape's body. ``state``: each live worker's connector state (the soonest expiry
    and any back-off win); ``store``: the backend and whether every worker reaches it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics, list(state), store))
    return generate_latest(registry)


class _Collector(Collector):
    def __init__(
        self, metrics: Metrics, states: list[StateOf], store: tuple[str, bool] | None
    ) -> None:
        self._metrics, self._states, self._store = metrics, states, store

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield _counter(
            "tokenproxy_requests", "Requests answered, by connector and status.",
            ["connector", "status"], m.requests,
        )  # fmt: skip
        yield _histogram(
            "tokenproxy_request_duration_seconds",
            "Time to answer a request (the whole answer for streamed bodies).",
            m.request_seconds,
        )
        yield _histogram(
            "tokenproxy_upstream_duration_seconds",
            "Time until the upstream's response headers arrived.",
            m.upstream_seconds,
        )
        yield _counter(
            "tokenproxy_token_requests", "Requests to identity providers, by outcome.",
            ["connector", "outcome"], m.token_requests,
        )  # fmt: skip
        yield _histogram(
            "tokenproxy_token_fetch_duration_seconds",
            "Time one token acquisition took (retries included).",
            m.token_seconds,
        )
        yield _counter(
            "tokenproxy_token_cache", "Requests served from the held token (hit) or not (miss).",
            ["connector", "result"], m.cache,
        )  # fmt: skip
        yield _counter(
            "tokenproxy_token_store", "Tokens taken from the store (hit) or fetched (miss).",
            ["connector", "result"], m.store,
        )  # fmt: skip
        yield _counter(
            "tokenproxy_upstream_retries",
            "Sends to the upstream after the first, by reason: connect, a status, reauth.",
            ["connector", "reason"], m.upstream_retries,
        )  # fmt: skip
        yield _counter(
            "tokenproxy_client_requests", "Requests of each named client, by connector.",
            ["connector", "client"], m.client_requests,
        )  # fmt: skip
        in_flight = GaugeMetricFamily(
            "tokenproxy_in_flight_requests", "Requests being answered now."
        )
        in_flight.add_metric([], m.in_flight)
        yield in_flight
        yield from self._state_gauges()

    def _state_gauges(self) -> Iterator[Metric]:
        now = time.time()
        expiry = GaugeMetricFamily(
            "tokenproxy_token_expiry_seconds",
            "Seconds until the held token expires (the soonest of every worker's).",
            labels=["connector"],
        )
        backing_off = GaugeMetricFamily(
            "tokenproxy_token_backoff",
            "1 while a connector cannot obtain a token (failing, or needs authorization).",
            labels=["connector"],
        )
        soonest: dict[str, float] = {}
        waiting: dict[str, int] = {}
        for state in self._states:
            for name, values in state.items():
                expires_at = values["expires_at"]
                if expires_at is not None:
                    soonest[name] = min(soonest.get(name, expires_at), expires_at)
                waiting[name] = max(waiting.get(name, 0), values["backing_off"])
        for name, expires_at in sorted(soonest.items()):
            expiry.add_metric([name], max(0.0, expires_at - now))
        for name, value in sorted(waiting.items()):
            backing_off.add_metric([name], value)
        yield expiry
        yield backing_off
        if self._store is not None:
            backend, up = self._store
            health = GaugeMetricFamily(
                "tokenproxy_token_store_up",
                "1 while the token store's backend answers (0: serving from local copies).",
                labels=["backend"],
            )
            health.add_metric([backend], int(up))
            yield health


def _counter(
    name: str, documentation: str, labels: list[str], values: Mapping[tuple[str, str], int]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _histogram(name: str, documentation: str, values: Mapping[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["connector"])
    bounds = [*(repr(b) for b in BUCKETS), "+Inf"]
    for connector, histogram in sorted(values.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, histogram.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric([connector], buckets, histogram.total)
    return family
