"""When one request goes to the upstream again, and after how long (``retries``).

Guarantees, per request:

- it is sent at most ``1 + attempts`` times in all, the replay after a re-authentication
  included. Without a ``retries`` block it may be sent twice more: once after a failed
  connection, once as the re-auth replay (so a stale pooled connection never costs a
  request its replay);
- only a request whose body is held (or that has none) is sent again;
- a connection that failed before any byte of an answer (refused, reset, closed
  unanswered, a connect timeout) is tried again for a listed method (idempotent ones by
  default), at once the first time: a pooled connection the upstream had just closed is
  the usual cause;
- an answer with a listed status is tried again after its ``Retry-After`` (seconds or an
  HTTP date) when that is at most ``max_delay``; a longer one goes to the client as it is.
  Without one, after a fully jittered exponential back-off (Envoy's: up to 25 ms, 50 ms,
  100 ms...), never longer than ``max_delay``.

The waits go through the connector's :class:`~proxy.tokens.model.Clock`, so tests observe
them with a fake clock instead of sleeping.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Protocol, TypeVar

from proxy.config.retries import IDEMPOTENT_METHODS, RetriesConfig
from proxy.errors import UpstreamError
from proxy.metrics.registry import METRICS
from proxy.tokens.model import Clock

BASE_DELAY = 0.025
RETRY_MAX_BODY = 1024 * 1024
"""Request bodies up to this size are held for another try (larger ones stream, once)."""


def retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds a ``Retry-After`` value asks for (RFC 9110 §10.2.3: delay-seconds or an
    HTTP date, read against ``now_wall``); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # not "²": str.isdigit takes any digit
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now_wall)


class _Answer(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def close(self) -> None: ...


AnswerT = TypeVar("AnswerT", bound=_Answer)


@dataclass(frozen=True)
class UpstreamRetries:
    """A connector's retry rules (from its ``retries``), and the clock its waits use."""

    attempts: int
    connect_attempts: int
    """Of those, at most this many after a failed connection."""
    statuses: frozenset[int]
    methods: frozenset[str]
    max_delay: float
    clock: Clock = field(repr=False)

    @classmethod
    def of(cls, config: RetriesConfig | None, clock: Clock) -> UpstreamRetries:
        if config is None:  # the re-auth's replay, and one after a failed connection
            return cls(2, 1, frozenset(), frozenset(IDEMPOTENT_METHODS), 0.0, clock)
        return cls(
            config.attempts,
            config.attempts,
            frozenset(config.on),
            frozenset(config.methods),
            config.max_delay,
            clock,
        )

    def body_limit(self, method: str) -> int:
        """Largest request body to hold so that it can be sent again (0: none)."""
        return RETRY_MAX_BODY if self.statuses and method in self.methods else 0

    def begin(self, connector: str, method: str, *, replayable: bool) -> Tries:
        """The sends of one request: none again unless its body can be sent again."""
        left = self.attempts if replayable else 0
        return Tries(
            self, connector, method in self.methods, left, min(left, self.connect_attempts)
        )


class Tries:
    """One request's sends after the first: how many are left, and why each was made."""

    __slots__ = ("_connector", "_connects_left", "_left", "_method_listed", "_rules", "made")

    def __init__(
        self,
        rules: UpstreamRetries,
        connector: str,
        method_listed: bool,
        left: int,
        connects_left: int,
    ) -> None:
        self._rules = rules
        self._connector = connector
        self._method_listed = method_listed
        self._left = left
        self._connects_left = connects_left
        self.made = 0
        """Sends after the first so far (the access log's ``retries``)."""

    def take(self, reason: str) -> bool:
        """Use one send, counted under ``reason``; False when none is left."""
        if self._left <= 0:
            return False
        if reason == "connect":
            if self._connects_left <= 0:
                return False
            self._connects_left -= 1
        self._left -= 1
        self.made += 1
        METRICS.upstream_retries[self._connector, reason] += 1
        return True

    async def send(self, once: Callable[[], Awaitable[AnswerT]]) -> AnswerT:
        """``once()``, again while the rules say another try may help and sends are left."""
        rules = self._rules
        while True:
            try:
                answer = await once()
            except UpstreamError as exc:
                if not (exc.worth_another_try and self._method_listed and self.take("connect")):
                    raise
                delay = 0.0 if self.made == 1 else self._backoff()
            else:
                if answer.status not in rules.statuses or not self._method_listed:
                    return answer
                try:
                    asked = retry_after(answer.headers.get("Retry-After"), rules.clock.wall())
                except BaseException:  # never leave an answer holding its connection
                    answer.close()
                    raise
                delay = self._backoff() if asked is None else asked
                if delay > rules.max_delay or not self.take(str(answer.status)):
                    return answer
                answer.close()
            if delay > 0:
                await rules.clock.sleep(delay)

    def _backoff(self) -> float:
        ceiling = BASE_DELAY * 2 ** max(0, self.made - 1)
        return min(self._rules.max_delay, random.uniform(0, ceiling))
