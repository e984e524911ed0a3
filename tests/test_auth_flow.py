"""The re-authentication flow of :meth:`Authenticator.send`, without sockets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from proxy.auth.base import Authenticator, Credential


@dataclass
class FakeResponse:
    status: int
    closed: bool = False

    def close(self) -> None:
        self.closed = True


class Renewing(Authenticator):
    """Hands out ``old``; ``renew`` gives ``new`` (or None), after ``renewal`` is set."""

    reauth_on = frozenset({401})

    def __init__(self, new: Credential | None) -> None:
        self.old = Credential("Bearer old", header="Authorization")
        self.new = new
        self.renewal = asyncio.Event()
        self.renewal.set()

    async def credential(self) -> Credential:
        return self.old

    async def renew(self, rejected: Credential) -> Credential | None:
        assert rejected == self.old
        await self.renewal.wait()
        return self.new


NEW = Credential("Bearer new", header="Authorization")


class Upstream:
    """Answers with the statuses given, in order; records the credentials it saw."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.seen: list[Credential | None] = []
        self.responses: list[FakeResponse] = []

    async def __call__(self, credential: Credential | None) -> FakeResponse:
        self.seen.append(credential)
        self.responses.append(FakeResponse(self.statuses.pop(0)))
        return self.responses[-1]


@pytest.mark.parametrize(
    ("statuses", "new", "replayable", "sent", "returned", "closed"),
    [
        ((200,), NEW, True, ["old"], 200, [False]),
        ((401, 200), NEW, True, ["old", "new"], 200, [True, False]),
        ((401, 401), NEW, True, ["old", "new"], 401, [True, False]),  # at most one replay
        ((401,), NEW, False, ["old"], 401, [False]),  # a streamed body cannot be replayed
        ((401,), None, True, ["old"], 401, [False]),  # nothing to renew with
        ((403,), NEW, True, ["old"], 403, [False]),  # not in reauth_on
    ],
)
async def test_send_renews_and_replays_at_most_once(
    statuses: tuple[int, ...],
    new: Credential | None,
    replayable: bool,
    sent: list[str],
    returned: int,
    closed: list[bool],
) -> None:
    upstream = Upstream(*statuses)
    response = await Renewing(new).send(upstream, replay=lambda: replayable)
    assert response.status == returned and response is upstream.responses[-1]
    assert [c.value.removeprefix("Bearer ") for c in upstream.seen if c] == sent
    assert [r.closed for r in upstream.responses] == closed


async def test_a_client_leaving_during_the_renewal_releases_the_rejected_response() -> None:
    auth = Renewing(NEW)
    auth.renewal.clear()  # the renewal takes as long as the token endpoint does
    upstream = Upstream(401, 200)
    sending = asyncio.ensure_future(auth.send(upstream, replay=lambda: True))
    await asyncio.sleep(0)
    sending.cancel()  # the client disconnected: aiohttp cancels the handler
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert [r.closed for r in upstream.responses] == [True]


async def test_pass_through_sends_without_a_credential_and_never_renews() -> None:
    class PassThrough(Authenticator):
        reauth_on = frozenset({401})

        async def credential(self) -> None:
            return None

    upstream = Upstream(401)
    response = await PassThrough().send(upstream, replay=lambda: True)
    assert (response.status, upstream.seen, response.closed) == (401, [None], False)
