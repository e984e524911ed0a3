"""Read deadlines for requests that leave the proxy, kept by one watchdog per runtime.

A request's deadline is armed when its connection is ready and its headers go out
(:class:`DeadlineRequest`, the sessions' request class) and pushed back whenever body data
is taken for sending (:func:`progress`): aiohttp's ``sock_read``, on a timer of ours that
ends with the request (docs/design.md, "Upstream read timeouts"). The deadline in force
travels in a context variable, which aiohttp's body-writing task inherits. Arming is a
float store; one task, ticking every :data:`TICK` seconds while any deadline is active,
cancels the requests whose deadline passed, and the request sees ``TimeoutError``. An
event-loop timer per request and per chunk cost a fifth of a small proxied request's time
(measured with py-spy), and aiohttp's trace hooks a tenth more; this costs a set insertion
and a context variable. Deadlines fire up to one tick late.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextvars import ContextVar, Token
from typing import Any

import aiohttp

TICK = 0.05

_ARMED: ContextVar[ReadDeadline | None] = ContextVar("read_deadline", default=None)


def progress() -> None:
    """Request bytes are on their way: push the deadline in force back (if any)."""
    deadline = _ARMED.get()
    if deadline is not None:
        deadline.sent()


class DeadlineRequest(aiohttp.ClientRequest):
    """aiohttp's request, arming the deadline in force once the connection is ready."""

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        progress()
        return await super().send(conn)


class Deadlines:
    def __init__(self) -> None:
        self._active: set[ReadDeadline] = set()
        self._watchdog: asyncio.Task[None] | None = None

    def deadline(self, seconds: float) -> ReadDeadline:
        """``with`` it around one request, in the request's task (made by a session using
        :class:`DeadlineRequest`, or by the lean client)."""
        return ReadDeadline(self, seconds)

    def _enter(self, deadline: ReadDeadline) -> None:
        self._active.add(deadline)
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        # It stops after a whole tick with no deadline, not as soon as one request ends:
        # at a light load, a watchdog per request cost a task each (3 % of a request, hot_path.py).
        try:
            while True:
                await asyncio.sleep(TICK)
                if not self._active:
                    return
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

    __slots__ = ("_deadlines", "_expired", "_seconds", "_task", "_token", "expires_at")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._task: asyncio.Task[Any] | None = None
        self._token: Token[ReadDeadline | None] | None = None
        self._expired = False
        self.expires_at = math.inf

    # A plain context manager, entered in the request's task: an async one costs two
    # coroutines per request, and nothing here waits.
    def __enter__(self) -> ReadDeadline:
        self._task = asyncio.current_task()
        self._token = _ARMED.set(self)
        self._deadlines._enter(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        self._deadlines._active.discard(self)
        if self._token is not None:
            _ARMED.reset(self._token)
        if self._expired and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:  # our cancellation, not someone else's
                raise TimeoutError("no answer in time") from exc

    def sent(self) -> None:
        self.expires_at = time.monotonic() + self._seconds

    def disarm(self) -> None:
        """Not waiting on the peer now (until the next :meth:`sent`)."""
        self.expires_at = math.inf

    def expire(self) -> None:
        self._deadlines._active.discard(self)
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()
