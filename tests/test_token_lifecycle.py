"""The token manager without sockets: a fake clock and a fake token endpoint, over the whole
range of lifetimes (2 s to a day) and margins, steady traffic, rotation and retries."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from proxy.config.custom import CustomAuthConfig
from proxy.config.loader import validate
from proxy.errors import TokenEndpointError
from proxy.tokens.custom import CustomGrant
from proxy.tokens.endpoint import TokenRequest
from proxy.tokens.grant import RequestContext
from proxy.tokens.manager import TokenManager
from proxy.tokens.model import GUARD_SHARE, Phase, Token
from proxy.tokens.oauth2 import OAuth2Grant
from tests.conftest import oauth2_auth_config
from tests.fakes import FakeClock, FakeTokenEndpoint, SteppedClock, settle

LIFETIMES = [2, 10, 60, 120, 300, 3600, 86400]
MARGINS = [60, 3600]  # the default, and one larger than most lifetimes


def manager(clock: FakeClock, endpoint: FakeTokenEndpoint, **fields: Any) -> TokenManager:
    config = oauth2_auth_config(**fields)
    return TokenManager("api", config, OAuth2Grant(config, "api"), endpoint, clock=clock)


@pytest.mark.parametrize("lifetime", LIFETIMES)
@pytest.mark.parametrize("margin", MARGINS)
def test_phases_follow_the_margin_capped_at_half_the_lifetime(lifetime: int, margin: int) -> None:
    token = Token.issued("t", 100.0, lifetime, margin, "token endpoint")
    effective = min(margin, lifetime / 2)
    usable = lifetime - effective
    assert token.phase(100.0) is Phase.FRESH
    assert token.phase(100.0 + usable * 0.999) is Phase.FRESH
    assert token.phase(100.0 + usable) is Phase.RENEWABLE
    guard = effective * GUARD_SHARE
    assert token.phase(100.0 + lifetime - guard * 1.001) is Phase.RENEWABLE
    assert token.phase(100.0 + lifetime - guard) is Phase.STALE
    assert token.phase(100.0 + lifetime) is Phase.EXPIRED


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.75])
async def test_lifetimes_count_from_the_start_of_the_second_the_request_was_sent(
    fraction: float,
) -> None:
    """A provider counting whole seconds (iat = floor(now)) may have used up to a second
    of ``expires_in`` already: the token is taken to expire that much earlier."""
    clock = FakeClock()
    clock.now += fraction  # wall time x.fraction when the request goes out
    endpoint = FakeTokenEndpoint(clock, lifetime=10)
    tokens = manager(clock, endpoint)
    await tokens.credential()
    assert tokens.describe()["expires_in"] == math.floor(10 - fraction)
    clock.advance(10 - fraction)
    assert tokens.phase() is Phase.EXPIRED


def test_a_zero_lifetime_token_is_expired_at_once() -> None:
    assert Token.issued("t", 5.0, 0, 60, "token endpoint").phase(5.0) is Phase.EXPIRED


async def steady_traffic(
    lifetime: int, margin: int, latency_share: float, periods: int = 5
) -> tuple[FakeTokenEndpoint, int, list[str]]:
    """Requests every 1/20 of the usable lifetime for ``periods`` usable lifetimes and a half,
    the provider taking ``latency_share`` of the margin to answer. Returns the endpoint, how
    many requests had to wait, and the state /connectors showed while the token was fresh."""
    clock = SteppedClock()
    effective = min(margin, lifetime / 2)
    usable = lifetime - effective
    endpoint = FakeTokenEndpoint(clock, lifetime=lifetime, latency=effective * latency_share)
    tokens = manager(clock, endpoint, refresh_margin=margin)
    first = asyncio.ensure_future(tokens.credential())
    await settle()
    await clock.step(endpoint.latency)
    assert (await first).value == "Bearer at-1"
    step = usable / 20
    waited, fresh_states, pending = 0, [], []
    end = clock.now - endpoint.latency + (periods + 0.5) * usable
    while clock.now < end:
        await clock.step(step)
        request = asyncio.ensure_future(tokens.credential())
        await settle()
        if not request.done():
            waited += 1
            pending.append(request)
        if tokens.phase() is Phase.FRESH:
            fresh_states.append(tokens.describe()["state"])
    await clock.step(lifetime)  # let anything still waiting finish
    await asyncio.gather(*pending)
    await tokens.close()
    return endpoint, waited, fresh_states


@pytest.mark.parametrize("lifetime", LIFETIMES)
@pytest.mark.parametrize("margin", MARGINS)
async def test_steady_traffic_costs_one_token_request_per_usable_lifetime(
    lifetime: int, margin: int
) -> None:
    endpoint, waited, fresh_states = await steady_traffic(lifetime, margin, latency_share=0.5)
    assert len(endpoint.requests) == 1 + 5  # the first, then one per usable lifetime
    assert waited == 0
    assert set(fresh_states) == {"valid"}  # never "expiring" while fresh


@pytest.mark.parametrize("lifetime", [2, 60, 86400])
async def test_no_request_waits_while_the_provider_answers_before_the_guard(
    lifetime: int,
) -> None:
    _, waited, _ = await steady_traffic(lifetime, 60, latency_share=(1 - GUARD_SHARE) * 0.95)
    assert waited == 0


async def test_a_provider_slower_than_the_margin_makes_requests_wait_not_fail() -> None:
    endpoint, waited, _ = await steady_traffic(60, 60, latency_share=0.95)
    assert waited > 0
    assert len(endpoint.requests) >= 6


UNUSABLE_BUT_ROTATED = [
    {"access_token": "a1", "refresh_token": "rt-1", "expires_in": "soon"},
    {"refresh_token": "rt-1", "expires_in": 300},
    {"access_token": "a\r\nX: 1", "refresh_token": "rt-1"},
    {"access_token": "a1", "refresh_token": "rt-1", "token_type": "DPoP"},
]


@pytest.mark.parametrize("answer", UNUSABLE_BUT_ROTATED)
async def test_a_rotated_refresh_token_survives_an_answer_unusable_otherwise(
    answer: dict[str, Any],
) -> None:
    clock = SteppedClock()
    endpoint = FakeTokenEndpoint(clock)
    endpoint.script.append((200, answer))
    tokens = manager(clock, endpoint, grant="refresh_token", refresh_token="rt-0")
    with pytest.raises(TokenEndpointError):
        await tokens.credential()
    await clock.step(400)  # past any back-off
    assert (await tokens.credential()).value == "Bearer at-2"
    assert endpoint.forms("refresh_token") == ["rt-0", "rt-1"]


async def test_a_custom_answer_unusable_otherwise_keeps_its_refresh_token() -> None:
    clock = SteppedClock()
    endpoint = FakeTokenEndpoint(clock)
    endpoint.script.append((200, {"data": {"token": "a1", "rt": "rt-1"}, "ttl": "soon"}))
    config = validate(
        CustomAuthConfig,
        {
            "type": "custom",
            "token_request": {"url": "https://idp.example/login", "body": {"u": "{{username}}"}},
            "refresh_request": {
                "url": "https://idp.example/renew",
                "body": {"rt": "{{refresh_token}}"},
                "access_token_path": "access_token",
                "expires_path": "expires_in",
            },
            "username": "user",
            "access_token_path": "data.token",
            "refresh_token_path": "data.rt",
            "expires_path": "ttl",
        },
    )
    tokens = TokenManager("api", config, CustomGrant(config, "api"), endpoint, clock=clock)
    with pytest.raises(TokenEndpointError):
        await tokens.credential()
    await clock.step(400)
    assert (await tokens.credential()).value == "Bearer at-2"
    assert [r.url for r in endpoint.requests] == [
        "https://idp.example/login",
        "https://idp.example/renew",
    ]
    assert endpoint.forms("rt") == [None, "rt-1"]


class CountingGrant(OAuth2Grant):
    """Counts the token requests it builds (each may carry a freshly signed assertion)."""

    built = 0

    def primary_request(self, current: RequestContext) -> TokenRequest:
        self.built += 1
        return super().primary_request(current)

    def refresh_request(self, current: RequestContext) -> TokenRequest | None:
        request = super().refresh_request(current)
        self.built += request is not None
        return request


@pytest.mark.parametrize("grant", ["client_credentials", "refresh_token"])
async def test_every_request_built_is_sent_once_with_a_fresh_assertion(grant: str) -> None:
    clock = SteppedClock()
    endpoint = FakeTokenEndpoint(clock)
    endpoint.script.append((503, {"error": "temporarily_unavailable"}))  # one retry
    config = oauth2_auth_config(
        grant=grant, refresh_token="rt-0", client_auth="client_secret_jwt", client_secret="k" * 32
    )
    counting = CountingGrant(config, "api")
    tokens = TokenManager("api", config, counting, endpoint, clock=clock)
    fetched = asyncio.ensure_future(tokens.credential())
    await settle()
    await clock.step(1)  # past the retry's pause
    await fetched
    await clock.step(300)  # expired: a renewal
    await tokens.credential()
    assertions = endpoint.forms("client_assertion")
    assert counting.built == len(endpoint.requests) == 3
    assert len(set(assertions)) == 3 and None not in assertions
