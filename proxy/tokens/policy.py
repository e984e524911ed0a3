"""The numbers of the token manager's retry and back-off behaviour, and its counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    """Tries of one token request for retryable failures (transport, 5xx, 429)."""
    attempt_delay: float = 0.25
    """First pause between tries; doubles, jittered. A longer Retry-After ends the tries."""
    max_attempt_delay: float = 5.0
    backoff_base: float = 1.0
    """Back-off after a failed fetch: doubles with each further failure, jittered."""
    backoff_max: float = 300.0
    min_fetch_interval: float = 1.0
    """Token requests of one connector start at least this far apart (no fetch storms)."""


@dataclass
class TokenStats:
    fetches: int = 0
    failures: int = 0
    last_error: str | None = None
    last_obtained: float | None = None
    """When the held token was obtained (monotonic clock), from the provider or the store."""
