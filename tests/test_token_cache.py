"""Token caching, single flight, renewal, failure and back-off, through the running proxy."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import (
    RunningProxy,
    StartOAuth2,
    StartProxy,
    eventually,
    oauth2_connector,
    warm,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer


@pytest.fixture
async def proxy(
    start_oauth2: StartOAuth2,
) -> RunningProxy:
    """One client-credentials connector; the IdP grants 300 s, the margin is 60 s."""
    return await start_oauth2()


async def call(client: aiohttp.ClientSession, proxy: RunningProxy) -> tuple[int, dict[str, Any]]:
    async with client.get(f"{proxy.url}/api/x") as response:
        body = await response.read()
        return response.status, {
            "headers": response.headers,
            "json": orjson.loads(body) if response.content_type == "application/json" else None,
        }


async def status_of(client: aiohttp.ClientSession, proxy: RunningProxy) -> dict[str, Any]:
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        return (await response.json())["connectors"][0]  # type: ignore[no-any-return]


def bearer(upstream: RecordingUpstream, index: int = -1) -> str:
    return upstream.header_values("Authorization", index)[0]


async def test_concurrent_cold_requests_cause_one_token_request(
    proxy: RunningProxy, upstream: RecordingUpstream, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    idp.delay = 0.2  # every request arrives while the one fetch is under way
    results = await asyncio.gather(*(call(client, proxy) for _ in range(200)))
    assert [status for status, _ in results] == [200] * 200
    assert len(idp.calls) == 1
    assert len({bearer(upstream, i) for i in range(200)}) == 1


async def test_token_is_reused_then_renewed_in_the_background(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    first = await warm(client, proxy, upstream)
    clock.advance(239)  # lifetime 300, margin 60: renewable from 240, stale from 285
    await call(client, proxy)
    assert len(idp.calls) == 1 and bearer(upstream) == first
    idp.delay = 0.3
    clock.advance(2)  # renewable: this request starts a renewal and does not wait for it
    started = asyncio.get_running_loop().time()
    await call(client, proxy)
    assert asyncio.get_running_loop().time() - started < 0.25
    assert bearer(upstream) == first

    async def renewed() -> bool:
        return (await status_of(client, proxy))["state"] == "valid" and not idp.active

    await eventually(renewed)
    await call(client, proxy)
    assert len(idp.calls) == 2 and bearer(upstream) != first


async def test_stale_token_makes_requests_wait_for_the_renewal(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    first = await warm(client, proxy, upstream)
    clock.advance(290)  # stale (from 285), before expiry (300)
    results = await asyncio.gather(*(call(client, proxy) for _ in range(20)))
    assert {status for status, _ in results} == {200}
    assert len(idp.calls) == 2
    assert {bearer(upstream, i) for i in range(1, 21)} == {bearer(upstream)} != {first}


async def test_failing_renewal_keeps_using_a_token_until_it_expires(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    first = await warm(client, proxy, upstream)
    # A long Retry-After: one attempt, then a back-off that outlasts the token.
    idp.script.append(answer(503, "down", {"Retry-After": "600"}))
    clock.advance(250)  # renewable: the renewal runs in the background
    status, _ = await call(client, proxy)
    assert (status, bearer(upstream)) == (200, first)

    async def failed() -> bool:
        return (await status_of(client, proxy))["state"] == "failing"

    await eventually(failed)
    assert len(idp.calls) == 2
    assert (await status_of(client, proxy))["state"] == "failing"
    status, _ = await call(client, proxy)  # in back-off: still the old token, no IdP call
    assert (status, bearer(upstream), len(idp.calls)) == (200, first, 2)
    clock.advance(51)  # now expired, and still in back-off
    status, answer_ = await call(client, proxy)
    assert status == 503
    assert answer_["json"]["error"] == "token_unavailable"
    assert 240 <= int(answer_["headers"]["Retry-After"]) <= 249  # capped at backoff_max 300
    assert len(idp.calls) == 2


async def test_a_failed_fetch_fails_every_waiter_once_then_backs_off(
    proxy: RunningProxy, idp: FakeIdP, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    idp.delay = 0.2
    idp.script.append(answer(401, {"error": "invalid_client", "error_description": "nope"}))
    results = await asyncio.gather(*(call(client, proxy) for _ in range(50)))
    assert {status for status, _ in results} == {502}
    bodies = {orjson.dumps(answer_["json"]) for _, answer_ in results}
    assert bodies == {
        orjson.dumps(
            {
                "error": "token_endpoint_error",
                "message": "the token endpoint refused the request (401 invalid_client)",
                "connector": "api",
            }
        )
    }
    assert len(idp.calls) == 1  # invalid_client is not retried
    status, answer_ = await call(client, proxy)
    assert status == 503
    assert answer_["headers"]["Retry-After"] in {"1", "2"}
    assert answer_["headers"]["Proxy-Status"] == (
        'tokenproxy; error=destination_unavailable; details="token endpoint failing, in back-off"'
    )
    assert len(idp.calls) == 1
    clock.advance(2)  # the back-off is over: the next request tries again, and succeeds
    status, _ = await call(client, proxy)
    assert status == 200 and len(idp.calls) == 2
    assert (await status_of(client, proxy))["state"] == "valid"


async def test_back_off_grows_and_honours_retry_after(
    proxy: RunningProxy, idp: FakeIdP, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    idp.script.extend([answer(400, {"error": "invalid_scope"})] * 3)
    waits = []
    for _ in range(3):
        assert (await call(client, proxy))[0] == 502
        _, answer_ = await call(client, proxy)
        waits.append(int(answer_["headers"]["Retry-After"]))
        clock.advance(waits[-1])
    assert waits[0] <= 2 and waits[2] >= 4  # 1 s, 2 s, 4 s, each up to 20 % more
    idp.script.append(answer(429, "slow down", {"Retry-After": "120"}))
    assert (await call(client, proxy))[0] == 502
    _, answer_ = await call(client, proxy)
    assert 119 <= int(answer_["headers"]["Retry-After"]) <= 120


async def test_transient_failures_are_retried_within_one_fetch(
    proxy: RunningProxy, upstream: RecordingUpstream, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    idp.script.extend([answer(503, "busy", {"Retry-After": "0"}), answer(502, "bad gateway")])
    status, _ = await call(client, proxy)
    assert status == 200
    assert len(idp.calls) == 3


async def test_unreachable_token_endpoint(
    start_proxy: StartProxy, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens on loopback
    proxy = await start_proxy(
        {"connectors": {"api": oauth2_connector(upstream.url, dead)}}, FakeClock()
    )
    status, answer_ = await call(client, proxy)
    assert status == 502
    assert answer_["json"]["message"] == "cannot connect to the token endpoint"
    assert upstream.requests == []


async def test_token_endpoint_timeout_is_504(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    connector = oauth2_connector(upstream.url, idp.url)
    connector["timeouts"] = {"read": 0.2}
    proxy = await start_proxy({"connectors": {"api": connector}}, FakeClock())
    idp.delay = 1
    status, answer_ = await call(client, proxy)
    assert status == 504
    assert answer_["json"]["error"] == "token_endpoint_timeout"
    assert upstream.requests == []


def jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("fields", "expires_in"),
    [
        ({"expires_in": "3600"}, 3600),
        ({"expires_in": 3600.9}, 3600),
        ({"expires_in": None}, 300),
        ({"expires_in": 10**12}, 86400),
        ({"expires_in": None, "access_token": jwt({"exp": 1_800_001_000 + 500})}, 500),
        ({"expires_in": 120, "access_token": jwt({"exp": 1_800_001_000 + 500})}, 120),
    ],
    ids=["numeric-string", "float", "absent", "huge-clamped", "jwt-exp", "expires-in-wins"],
)
async def test_lifetimes(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    fields: dict[str, Any],
    expires_in: int,
) -> None:
    idp.expires_in = 999
    idp.overrides.update(fields)
    proxy = await start_oauth2()
    assert (await call(client, proxy))[0] == 200
    assert (await status_of(client, proxy))["expires_in"] == expires_in


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"access_token": "t", "expires_in": "abc"}, "expires_in is not a number"),
        ({"access_token": "t", "expires_in": True}, "expires_in is not a number"),
        ({"access_token": "t", "expires_in": -5}, "expires_in is not a non-negative number"),
        ({"token_type": "Bearer"}, "the token endpoint's answer has no usable access_token"),
        ({"access_token": ""}, "the token endpoint's answer has no usable access_token"),
        ({"access_token": None}, "the token endpoint's answer has no usable access_token"),
        ({"access_token": 12}, "the token endpoint's answer has no usable access_token"),
        ({"access_token": {"a": 1}}, "the token endpoint's answer has no usable access_token"),
        (
            {"access_token": "a\r\nX-Evil: 1"},
            "the access_token holds characters that cannot go in a header, or is too long",
        ),
        (
            {"access_token": "trailing-newline\n"},
            "the access_token holds characters that cannot go in a header, or is too long",
        ),
        (
            {"access_token": "a b"},
            "the access_token holds characters that cannot go in a header, or is too long",
        ),
        (
            {"access_token": "t\u00e9"},
            "the access_token holds characters that cannot go in a header, or is too long",
        ),
        (
            {"access_token": "x" * 20000},
            "the access_token holds characters that cannot go in a header, or is too long",
        ),
        (
            {"access_token": "t", "token_type": "DPoP"},
            "the token endpoint issued a token that is not a Bearer token; set token_prefix to "
            "send it anyway",
        ),
        ([1, 2], "the token endpoint's answer is not a JSON object"),
        ("<html>login</html>", "the token endpoint's answer is not JSON (Content-Type: text/html)"),
        (
            '{"access_token": ',
            "the token endpoint's answer is not JSON (Content-Type: application/octet-stream)",
        ),
    ],
)
async def test_unusable_answers_are_502_and_never_cached(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    body: Any,
    message: str,
) -> None:
    headers = {"Content-Type": "text/html; charset=utf-8"} if "<html>" in str(body) else None
    idp.script.append(answer(200, body, headers))
    status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]) == (
        502,
        {"error": "token_endpoint_error", "message": message, "connector": "api"},
    )
    assert upstream.requests == []
    assert len(idp.calls) == 1
    clock.advance(2)  # the next fetch is a real one: nothing bad was cached
    assert (await call(client, proxy))[0] == 200


@pytest.mark.parametrize("token_type", ["bearer", "BEARER", None])
async def test_bearer_token_types(
    proxy: RunningProxy, idp: FakeIdP, client: aiohttp.ClientSession, token_type: str | None
) -> None:
    idp.overrides["token_type"] = token_type
    assert (await call(client, proxy))[0] == 200


async def test_other_token_type_is_sent_with_a_custom_prefix(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    idp.overrides["token_type"] = "DPoP"
    connector = oauth2_connector(upstream.url, idp.url, token_prefix="DPoP")
    proxy = await start_proxy({"connectors": {"api": connector}})
    assert (await call(client, proxy))[0] == 200
    assert bearer(upstream).startswith("DPoP demo-at-")


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_from_the_token_endpoint_are_never_followed(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    status: int,
) -> None:
    idp.script.append(answer(status, "", {"Location": f"{idp.url}/token"}))
    code, answer_ = await call(client, proxy)
    assert code == 502
    assert (
        answer_["json"]["message"]
        == f"the token endpoint answered {status} (a redirect, never followed)"
    )
    assert len(idp.calls) == 1 and upstream.requests == []


async def test_oversized_answer_is_refused(
    proxy: RunningProxy, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    idp.script.append(answer(200, b"{" + b" " * (2 * 1024 * 1024) + b"}"))
    status, answer_ = await call(client, proxy)
    assert status == 502
    assert answer_["json"]["message"] == "the token endpoint's answer is larger than 1 MiB"


async def test_zero_lifetime_tokens_cannot_cause_a_fetch_storm(
    proxy: RunningProxy, idp: FakeIdP, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    idp.overrides["expires_in"] = 0
    started = clock.monotonic()
    for _ in range(5):
        assert (await call(client, proxy))[0] == 200
    assert len(idp.calls) == 5  # used once each, never cached...
    assert clock.monotonic() - started >= 4  # ...and fetched at most once a second


async def test_a_disconnecting_client_never_cancels_the_shared_fetch(
    proxy: RunningProxy, upstream: RecordingUpstream, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    idp.delay = 0.4
    impatient = asyncio.create_task(call(client, proxy))
    await asyncio.sleep(0.1)
    impatient.cancel()
    await asyncio.gather(impatient, return_exceptions=True)
    assert (await call(client, proxy))[0] == 200
    assert len(idp.calls) == 1


async def test_one_failing_connector_never_affects_another(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    aiohttp_raw_server: Any,
) -> None:
    hanging = FakeIdP()
    hanging.delay = 30
    hanging_server = await aiohttp_raw_server(hanging, access_log=None)
    slow = oauth2_connector(upstream.url, str(hanging_server.make_url("")).rstrip("/"))
    slow["route"], slow["timeouts"] = "/slow", {"read": 0.5}
    proxy = await start_proxy(
        {"connectors": {"api": oauth2_connector(upstream.url, idp.url), "slow": slow}}
    )
    stuck = asyncio.create_task(client.get(f"{proxy.url}/slow/x"))
    await asyncio.sleep(0.1)
    started = asyncio.get_running_loop().time()
    results = await asyncio.gather(*(call(client, proxy) for _ in range(20)))
    assert {status for status, _ in results} == {200}
    assert asyncio.get_running_loop().time() - started < 1
    async with await stuck as response:
        assert response.status == 504


async def test_a_burst_in_the_renewal_window_renews_once_without_waiting(
    proxy: RunningProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    first = await warm(client, proxy, upstream)
    clock.advance(250)  # renewable: inside [240, 285)
    idp.delay = 2
    results = await asyncio.gather(*(call(client, proxy) for _ in range(200)))
    assert [status for status, _ in results] == [200] * 200
    assert idp.active == 1  # all answered while the renewal is still at the IdP: none waited
    assert {bearer(upstream, i) for i in range(1, 201)} == {first}
    assert len(idp.calls) == 2  # one renewal, under way in the background


async def test_concurrent_renewals_never_reuse_a_refresh_token(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    auth = {"grant": "refresh_token", "refresh_token": idp.seed_refresh_token()}
    proxy = await start_oauth2(**auth)
    idp.delay = 0.05
    for _ in range(5):
        results = await asyncio.gather(*(call(client, proxy) for _ in range(50)))
        assert {status for status, _ in results} == {200}
        clock.advance(301)  # expired: the next burst must renew with the rotated token
    assert idp.grants == ["refresh_token"] * 5
    assert idp.max_active == 1
    assert not idp.reuse_detected


@pytest.mark.parametrize(
    ("lifetime", "grant", "seconds", "token_requests"),
    [
        (60, "client_credentials", 10, 1),  # once took 11 token requests for 20 requests
        (10, "refresh_token", 26, 6),  # renewable from 5 s: 0, 5, ..., 25 (once 27 rotations)
        (3600, "client_credentials", 3000, 1),
    ],
)
async def test_short_lived_tokens_are_fetched_once_per_usable_lifetime(
    start_oauth2: StartOAuth2,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    lifetime: int,
    grant: str,
    seconds: int,
    token_requests: int,
) -> None:
    idp.expires_in = lifetime
    auth = {"grant": grant}
    if grant == "refresh_token":
        auth["refresh_token"] = idp.seed_refresh_token()
    proxy = await start_oauth2(**auth)
    assert (await call(client, proxy))[0] == 200
    assert (await status_of(client, proxy))["state"] == "valid"  # not "expiring" when new
    steps = 20
    for _ in range(steps):
        clock.advance(seconds / steps)
        assert (await call(client, proxy))[0] == 200
        await eventually(lambda: _idle(idp))  # a background renewal, if one started
    assert len(idp.calls) == token_requests
    assert not idp.reuse_detected


async def _idle(idp: FakeIdP) -> bool:
    return not idp.active


@pytest.mark.parametrize(
    ("failure", "proxy_status"),
    [
        ("unreachable", "connection_refused"),
        ("timeout", "http_response_timeout"),
        ("refused", "proxy_configuration_error"),
        ("down", "destination_unavailable"),
        ("not-json", "http_protocol_error"),
        ("no-token", "http_protocol_error"),
    ],
)
async def test_token_endpoint_failures_carry_the_closest_proxy_status(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    failure: str,
    proxy_status: str,
) -> None:
    """RFC 9209: the closest error type, and ``details`` naming the hop that failed."""
    connector = oauth2_connector(
        upstream.url, "http://127.0.0.1:9" if failure == "unreachable" else idp.url
    )
    connector["timeouts"] = {"read": 0.2}
    scripted = {
        "timeout": None,
        "refused": answer(401, {"error": "invalid_client"}),
        "down": answer(503, "down", {"Retry-After": "600"}),
        "not-json": answer(200, "<html>"),
        "no-token": answer(200, {"token_type": "Bearer"}),
    }.get(failure)
    if scripted is not None:
        idp.script.append(scripted)
    idp.delay = 1 if failure == "timeout" else 0
    proxy = await start_proxy({"connectors": {"api": connector}}, FakeClock())
    _, answer_ = await call(client, proxy)
    expected = f'tokenproxy; error={proxy_status}; details="token endpoint"'
    assert answer_["headers"]["Proxy-Status"] == expected
    assert answer_["json"]["connector"] == "api"


async def test_one_deadline_bounds_the_whole_token_acquisition(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    """A provider that never answers in time: three tries of 0.4 s and the pauses between
    them once made a client wait about 2 s; now it waits the connector's connect + read."""
    api = oauth2_connector(upstream.url, idp.url)
    api["timeouts"] = {"connect": 0.2, "read": 0.4}
    proxy = await start_proxy({"connectors": {"api": api}})  # the real clock: real pauses
    idp.delay = 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, answer_ = await call(client, proxy)
    assert (status, answer_["json"]["error"]) == (504, "token_endpoint_timeout")
    assert loop.time() - started < 1.0
