"""Custom token requests end to end: request shapes, extraction, expiry types, refresh."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import RunningProxy, StartProxy, status_and_message, warm
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer
from tests.test_token_cache import jwt

NOW = 1_800_001_000  # FakeClock's wall time at start: 2027-01-15T08:16:40Z
CREDENTIALS = {
    "client_id": "cid",
    "client_secret": "c$ecret",
    "username": "svc",
    "password": "p@ss",
}

StartCustom = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
def start_custom(
    start_proxy: StartProxy, upstream: RecordingUpstream, idp: FakeIdP, clock: FakeClock
) -> StartCustom:
    """A proxy with one ``custom`` connector on /api; ``token_request`` urls are relative to
    the fake IdP; other keyword arguments go into the auth block."""

    def absolute(request: dict[str, Any]) -> dict[str, Any]:
        return {**request, "url": idp.url + request["url"]}

    async def start(token_request: dict[str, Any], **auth: Any) -> RunningProxy:
        settings: dict[str, Any] = {"type": "custom", **CREDENTIALS, **auth}
        settings["token_request"] = absolute(token_request)
        if "refresh_request" in auth:
            settings["refresh_request"] = absolute(auth["refresh_request"])
        connector = {"route": "/api", "upstream": upstream.url, "auth": settings}
        return await start_proxy({"connectors": {"api": connector}}, clock)

    return start


async def expires_in(client: aiohttp.ClientSession, proxy: RunningProxy) -> int | None:
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        return (await response.json())["connectors"][0]["expires_in"]  # type: ignore[no-any-return]


async def test_form_body_with_templates(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(200, {"access_token": "vendor-t", "expires_in": 600}))
    proxy = await start_custom(
        {
            "url": "/login",
            "body": {"user": "{{username}}", "pass": "{{password}}", "n": 1, "flag": True},
            "headers": '{"X-Client": "{{client_id}}"}',
        }
    )
    assert await warm(client, proxy, upstream) == "Bearer vendor-t"
    call = idp.calls[0]
    assert (call["method"], call["path"]) == ("POST", "/login")
    assert call["form"] == {"user": "svc", "pass": "p@ss", "n": "1", "flag": "true"}
    assert call["headers"]["X-Client"] == "cid"


async def test_nested_json_body_given_as_a_json_string(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(201, {"data": {"auth": {"token": "deep-t"}}}))
    body = (
        '{"auth": {"identity": {"methods": ["password"], "password": {"user": '
        '{"name": "{{username}}", "password": "{{password}}"}}}}}'
    )
    proxy = await start_custom(
        {"url": "/v3/auth", "method": "PUT", "body": body, "body_format": "json"},
        access_token_path="data.auth.token",
    )
    assert await warm(client, proxy, upstream) == "Bearer deep-t"
    call = idp.calls[0]
    assert call["method"] == "PUT"
    assert call["json"] == {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": "svc", "password": "p@ss"}},
            }
        }
    }


async def test_get_with_templated_query(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(200, {"items": [{"value": "from-list"}]}))
    proxy = await start_custom(
        {"url": "/token", "method": "GET", "query": {"key": "{{client_secret}}", "fmt": "json"}},
        access_token_path="items.0.value",
    )
    assert await warm(client, proxy, upstream) == "Bearer from-list"
    assert (idp.calls[0]["method"], idp.calls[0]["query"]) == ("GET", "key=c$ecret&fmt=json")


@pytest.mark.parametrize(
    ("path", "answer_body"),
    [
        ("$.data.auth.token", {"data": {"auth": {"token": "jp-t"}}}),
        ("$.items[1].value", {"items": [{"value": "no"}, {"value": "jp-t"}]}),
        ("$['result']['access-token']", {"result": {"access-token": "jp-t"}}),
    ],
)
async def test_jsonpath_extraction(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    path: str,
    answer_body: dict[str, Any],
) -> None:
    idp.script.append(answer(200, answer_body))
    proxy = await start_custom({"url": "/t"}, access_token_path=path)
    assert await warm(client, proxy, upstream) == "Bearer jp-t"


async def test_token_from_a_response_header_with_any_body(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(201, "<catalog/>", {"X-Subject-Token": "hdr-t"}))
    proxy = await start_custom({"url": "/v3/auth/tokens"}, token_header="X-Subject-Token")
    assert await warm(client, proxy, upstream) == "Bearer hdr-t"


@pytest.mark.parametrize(
    ("answer_body", "headers", "message"),
    [
        ({"data": {}}, None, "the token endpoint's answer has nothing at data.auth.token"),
        (
            "<html/>",
            {"Content-Type": "text/html"},
            "the token endpoint's answer is not JSON (Content-Type: text/html)",
        ),
        (
            {"data": {"auth": {"token": "t\n"}}},
            None,
            "the value at data.auth.token holds characters that cannot go in a header, or is too "
            "long",
        ),
    ],
)
async def test_unusable_answers(
    start_custom: StartCustom,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    answer_body: Any,
    headers: dict[str, str] | None,
    message: str,
) -> None:
    idp.script.append(answer(200, answer_body, headers))
    proxy = await start_custom({"url": "/t"}, access_token_path="data.auth.token")
    assert await status_and_message(client, proxy) == (502, message)


async def test_missing_token_header_is_an_error(
    start_custom: StartCustom, idp: FakeIdP, client: aiohttp.ClientSession
) -> None:
    idp.script.append(answer(200, {"access_token": "in-body-only"}))
    proxy = await start_custom({"url": "/t"}, token_header="X-Subject-Token")
    assert await status_and_message(client, proxy) == (
        502,
        "the token endpoint's answer has no usable token header",
    )


@pytest.mark.parametrize(
    ("expires_type", "value", "seconds"),
    [
        ("seconds", 900, 900),
        ("seconds", "900", 900),
        ("milliseconds", 900_000, 900),
        ("epoch_seconds", NOW + 900, 900),
        ("epoch_milliseconds", (NOW + 900) * 1000, 900),
        ("datetime", "2027-01-15T08:31:40Z", 900),
        ("datetime", "2027-01-15T09:31:40+01:00", 900),
        ("datetime", "2027-01-15T08:31:40", 900),
        ("milliseconds", 10**15, 86400),
    ],
)
async def test_expiry_types(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    expires_type: str,
    value: Any,
    seconds: int,
) -> None:
    idp.script.append(answer(200, {"token": "t", "valid": {"until": value}}))
    proxy = await start_custom(
        {"url": "/t"},
        access_token_path="token",
        expires_path="valid.until",
        expires_type=expires_type,
    )
    await warm(client, proxy, upstream)
    assert await expires_in(client, proxy) == seconds


class SkewedClock:
    """The provider's wall clock: ours, ``skew`` seconds off."""

    def __init__(self, clock: FakeClock, skew: float) -> None:
        self.clock, self.skew = clock, skew

    def wall(self) -> float:
        return self.clock.wall() + self.skew


@pytest.mark.parametrize("skew", [-600, 0, 600], ids=["behind", "in-step", "ahead"])
@pytest.mark.parametrize("expires_type", ["epoch_seconds", "datetime", "jwt-exp"])
async def test_absolute_expiries_are_read_on_the_providers_own_clock(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    expires_type: str,
    skew: int,
) -> None:
    """Row B9: a provider 10 minutes off issues a 900 s token; we hold it 900 s, not 1500
    or 300, because its expiry is read against its own ``Date`` header."""
    provider = SkewedClock(clock, skew)
    idp.clock = provider  # type: ignore[assignment]
    expiry = NOW + skew + 900
    value: Any = {
        "epoch_seconds": expiry,
        "datetime": datetime.fromtimestamp(expiry, UTC).isoformat(),
        "jwt-exp": None,
    }[expires_type]
    token = jwt({"exp": expiry}) if value is None else "t"
    idp.script.append(answer(200, {"token": token, "exp": value}))
    auth: dict[str, Any] = {"access_token_path": "token"}
    if value is not None:
        auth.update(expires_path="exp", expires_type=expires_type)
    proxy = await start_custom({"url": "/t"}, **auth)
    await warm(client, proxy, upstream)
    assert await expires_in(client, proxy) == 900


@pytest.mark.parametrize("value", [0, 400, 999])
async def test_sub_second_lifetimes_are_never_stretched_and_never_storm(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    value: int,
) -> None:
    """A lifetime under a second (0-999 ms) is honoured as it is, never rounded up: a
    second later the token is gone and the next request brings a new one; and fetches stay
    at most one a second however short the lifetimes."""
    idp.script.extend([answer(200, {"access_token": f"t{i}", "ms": value}) for i in range(6)])
    proxy = await start_custom({"url": "/t"}, expires_path="ms", expires_type="milliseconds")
    for _ in range(3):
        assert (await status_and_message(client, proxy))[0] == 200
        clock.advance(1)
    assert upstream.header_values("Authorization", 0) != upstream.header_values("Authorization")
    assert len(idp.calls) == 3
    started = clock.monotonic()
    for _ in range(3):  # no time between requests: a zero lifetime is fetched at most 1/s
        assert (await status_and_message(client, proxy))[0] == 200
    assert clock.monotonic() - started >= (2 if value == 0 else 0)


@pytest.mark.parametrize(
    ("expires_type", "value", "message"),
    [
        ("datetime", "tomorrow", "the expiry at exp is not an ISO 8601 datetime"),
        ("datetime", 12, "the expiry at exp is not an ISO 8601 datetime"),
        ("seconds", "soon", "the expiry at exp is not a number"),
        ("epoch_seconds", -1, "the expiry at exp is not a non-negative number"),
    ],
)
async def test_unreadable_expiry(
    start_custom: StartCustom,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    expires_type: str,
    value: Any,
    message: str,
) -> None:
    idp.script.append(answer(200, {"access_token": "t", "exp": value}))
    proxy = await start_custom({"url": "/t"}, expires_path="exp", expires_type=expires_type)
    assert await status_and_message(client, proxy) == (502, message)


async def test_an_expiry_in_the_past_is_used_once_and_never_storms(
    start_custom: StartCustom,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.script.extend(
        [answer(200, {"access_token": f"t{i}", "exp": "2020-01-01T00:00:00Z"}) for i in range(3)]
    )
    proxy = await start_custom({"url": "/t"}, expires_path="exp", expires_type="datetime")
    started = clock.monotonic()
    for _ in range(3):
        assert (await status_and_message(client, proxy))[0] == 200
    assert len(idp.calls) == 3  # never cached...
    assert clock.monotonic() - started >= 2  # ...and fetched at most once a second


async def test_refresh_request_with_its_own_shape_and_paths(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.script.extend(
        [
            answer(200, {"session": {"token": "t1", "refresh": "r1", "ttl": 100}}),
            answer(200, {"renewed": {"token": "t2", "ttl": 100}}),  # no new refresh token
            answer(200, {"renewed": {"token": "t3", "ttl": 100}}),
        ]
    )
    proxy = await start_custom(
        {"url": "/login", "body": {"u": "{{username}}", "p": "{{password}}"}},
        access_token_path="session.token",
        refresh_token_path="session.refresh",
        expires_path="session.ttl",
        refresh_request={
            "url": "/renew",
            "method": "PUT",
            "body_format": "json",
            "body": {"refresh": "{{refresh_token}}", "old": "{{access_token}}"},
            "access_token_path": "renewed.token",
            "expires_path": "renewed.ttl",
        },
    )
    assert await warm(client, proxy, upstream) == "Bearer t1"
    for expected in ("Bearer t2", "Bearer t3"):
        clock.advance(100)
        assert await warm(client, proxy, upstream) == expected
    assert [(c["method"], c["path"]) for c in idp.calls] == [
        ("POST", "/login"),
        ("PUT", "/renew"),
        ("PUT", "/renew"),
    ]
    # The refresh token is kept when a renewal returns none; the access token is the current.
    assert [c["json"] for c in idp.calls[1:]] == [
        {"refresh": "r1", "old": "t1"},
        {"refresh": "r1", "old": "t2"},
    ]


async def test_failed_renewal_falls_back_to_the_token_request(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    idp.script.extend(
        [
            answer(200, {"access_token": "t1", "refresh_token": "r1", "expires_in": 100}),
            answer(403, {"message": "refresh not allowed"}),
            answer(200, {"access_token": "t2", "expires_in": 100}),
        ]
    )
    proxy = await start_custom(
        {"url": "/login"},
        refresh_token_path="refresh_token",
        refresh_request={"url": "/refresh", "body": {"rt": "{{refresh_token}}"}},
    )
    assert await warm(client, proxy, upstream) == "Bearer t1"
    clock.advance(100)
    assert await warm(client, proxy, upstream) == "Bearer t2"
    assert [c["path"] for c in idp.calls] == ["/login", "/refresh", "/login"]


async def test_upstream_401_renews_a_custom_token_too(
    start_custom: StartCustom,
    idp: FakeIdP,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.extend([answer(200, {"access_token": f"t{i}"}) for i in (1, 2)])
    proxy = await start_custom({"url": "/login"})
    calls = 0

    async def reject_first(request: web.BaseRequest) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await answer(401 if calls == 1 else 200, "x")(request)

    upstream.respond = reject_first
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 200
    assert upstream.header_values("Authorization", 0) == ["Bearer t1"]
    assert upstream.header_values("Authorization", 1) == ["Bearer t2"]
