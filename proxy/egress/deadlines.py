"""Read deadlines for requests that leave the proxy, kept by one watchdog per runtime.

A request arms its deadline when its headers went out and pushes it back with every body
chunk sent (:mod:`proxy.egress.sessions` hooks both): aiohttp's ``sock_read``, on a timer of
ours that ends with the request (docs/design.md, "Upstream read timeouts"). Arming is a
float store; one task, ticking every :data:`TICK` seconds while any deadline is active,
cancels the requests whose deadline passed, and the request sees ``TimeoutError``. An
event-loop timer per request and per chunk cost a fifth of a small proxied request's time
(measured with py-spy); this costs a set insertion. Deadlines fire up to one tick late.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

TICK = 0.05


class Deadlines:
    def __init__(self) -> None:
        self._active: set[ReadDeadline] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def deadline(self, seconds: float) -> ReadDeadline:
        """``async with`` it around one request; pass it as ``trace_request_ctx``."""
        return ReadDeadline(self, seconds)

    def _enter(self, deadline: ReadDeadline) -> None:
        self._active.add(deadline)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        try:
            while self._active:
                await asyncio.sleep(TICK)
                now = time.monotonic()  # the clock of ReadDeadline.sent, whatever the loop
                for deadline in [d for d in self._active if d.expires_at <= now]:
                    deadline.expire()
        finally:
            self._watchdog = None

    async def close(self) -> None:
        task = self._watchdog
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class ReadDeadline:
    """Not armed until :meth:`sent`; a plain class, as it is on the hot path."""

    __slots__ = ("_deadlines", "_expired", "_seconds", "_task", "expires_at")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._expired = False
        self.expires_at = math.inf

    async def __aenter__(self) -> ReadDeadline:
        self._task = asyncio.current_task()
        self._deadlines._enter(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        self._deadlines._active.discard(self)
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:  # our cancellation, not someone else's
                raise TimeoutError("no answer in time") from exc

    def sent(self) -> None:
        self.expires_at = time.monotonic() + self._seconds

    def expire(self) -> None:
        self._deadlines._active.discard(self)
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()
