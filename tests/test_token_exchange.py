"""``grant: token_exchange`` (RFC 8693) end to end: what the fake provider receives, how
its answers are judged, and chaining (``subject_connector``), where a renewed subject token
causes exactly one new exchange."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.grants import ACCESS_TOKEN_TYPE
from proxy.tokens.exchange import TOKEN_EXCHANGE_GRANT
from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    connector,
    failed_then_served,
    oauth2_connector,
    warm,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer
from tests.test_cli import tokenproxy

JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT = "SUBJECTcanary-workload-token-3c1d"
ACTOR = "ACTORcanary-service-token-9a7e"


def exchange_auth(idp: FakeIdP, **fields: Any) -> dict[str, Any]:
    return {
        "type": "oauth2",
        "grant": "token_exchange",
        "token_url": f"{idp.url}/sts",
        **fields,
    }


async def start_exchange(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    clock: FakeClock,
    idp: FakeIdP,
    **fields: Any,
) -> RunningProxy:
    """The connector 'api' exchanging the fixed ``SUBJECT`` (a JWT the fake knows)."""
    idp.subject_tokens[SUBJECT] = JWT_TYPE
    auth = exchange_auth(idp, subject_token=SUBJECT, subject_token_type=JWT_TYPE, **fields)
    return await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}}, clock)


@pytest.mark.parametrize("token_type", ["Bearer", "N_A"])
async def test_the_exchange_sends_every_parameter_it_is_given(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    token_type: str,
) -> None:
    idp.actor_tokens[ACTOR] = ACCESS_TOKEN_TYPE
    idp.overrides["token_type"] = token_type  # N_A: RFC 8693 §2.2.1, accepted
    proxy = await start_exchange(
        start_proxy,
        upstream,
        clock,
        idp,
        actor_token=ACTOR,
        actor_token_type=ACCESS_TOKEN_TYPE,
        requested_token_type=ACCESS_TOKEN_TYPE,
        audience="https://api.example",
        resource=["https://a.example/", "https://b.example/"],
        scopes=["read"],
    )
    sent = await warm(client, proxy, upstream)
    assert sent.removeprefix("Bearer ") in idp.issued
    (call,) = idp.calls
    assert call["form"]["grant_type"] == TOKEN_EXCHANGE_GRANT
    assert call["exchange"] == {
        "subject_token": SUBJECT,
        "actor_token": ACTOR,
        "audience": "https://api.example",
        "resource": ["https://a.example/", "https://b.example/"],
        "requested_token_type": ACCESS_TOKEN_TYPE,
    }
    assert call["form"]["scope"] == "read"
    assert "client_id" not in call["form"] and "Authorization" not in call["headers"]


@pytest.mark.parametrize(
    ("issued", "message"),
    [
        (
            JWT_TYPE,
            f"the token endpoint issued {JWT_TYPE!r}, not the requested {ACCESS_TOKEN_TYPE!r}",
        ),
        (
            "<b>SECRETcanary said</b> something",
            f"the token endpoint issued a type it cannot name, not the requested "
            f"{ACCESS_TOKEN_TYPE!r}",
        ),
        (
            None,
            f"the token endpoint's answer has no issued_token_type (requested "
            f"{ACCESS_TOKEN_TYPE!r})",
        ),
    ],
)
async def test_an_issued_token_type_other_than_requested_is_a_safe_502(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    issued: str | None,
    message: str,
) -> None:
    idp.overrides["issued_token_type"] = issued
    proxy = await start_exchange(
        start_proxy, upstream, clock, idp, requested_token_type=ACCESS_TOKEN_TYPE
    )
    async with client.get(f"{proxy.url}/api/x") as response:
        body = await response.json()
        assert response.status == 502
    assert body == {"error": "token_endpoint_error", "message": message, "connector": "api"}
    assert not upstream.requests


async def chained(
    start_proxy: StartProxy, upstream: RecordingUpstream, idp: FakeIdP, clock: FakeClock
) -> RunningProxy:
    """'api' (listed first: order does not matter) exchanges the current token of 'login'
    (client credentials at the same fake, so the fake knows it as one it issued)."""
    api = connector(upstream.url, auth=exchange_auth(idp, subject_connector="login"))
    login = {**oauth2_connector(upstream.url, idp.url), "route": "/login"}
    return await start_proxy({"connectors": {"api": api, "login": login}}, clock)


def exchanges(idp: FakeIdP) -> list[str]:
    """The subject token of every exchange the fake answered, in order."""
    return [call["exchange"]["subject_token"] for call in idp.calls if "exchange" in call]


async def test_a_renewed_subject_token_is_exchanged_once(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await chained(start_proxy, upstream, idp, clock)
    first = await warm(client, proxy, upstream)
    await warm(client, proxy, upstream)  # the subject is unchanged: nothing new asked
    subjects = exchanges(idp)
    assert len(subjects) == 1 and subjects[0] in idp.issued
    async with client.post(f"{proxy.url}/_proxy/connectors/login/refresh") as response:
        assert response.status == 200  # the subject connector has a new token now
    upstream.requests.clear()

    async def through_api() -> int:
        async with client.get(f"{proxy.url}/api/x") as response:
            return response.status

    assert await asyncio.gather(*(through_api() for _ in range(8))) == [200] * 8
    after = exchanges(idp)
    assert len(after) == 2 and after[1] != subjects[0]  # one exchange, of the new subject
    sent = {value for r in upstream.requests for k, value in r["headers"] if k == "Authorization"}
    assert len(sent) == 1 and sent != {first}


async def test_the_subject_connectors_failure_is_the_clients_answer(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    idp.script.append(answer(401, {"error": "invalid_client"}))
    proxy = await chained(start_proxy, upstream, idp, clock)
    async with client.get(f"{proxy.url}/api/x") as response:
        body = await response.json()
        assert response.status == 502
    assert body["error"] == "token_endpoint_error"
    assert body["message"].startswith("subject connector 'login': the token endpoint refused")
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 503  # the subject's back-off, at once
        assert "subject connector 'login'" in (await response.json())["message"]
    assert not exchanges(idp) and not upstream.requests


async def test_a_reload_keeps_the_exchanged_token_and_its_link(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await chained(start_proxy, upstream, idp, clock)
    before = await warm(client, proxy, upstream)
    async with client.post(f"{proxy.url}/_proxy/reload") as response:
        assert response.status == 200, await response.text()
    assert await warm(client, proxy, upstream) == before  # inherited, subject unchanged
    async with client.post(f"{proxy.url}/_proxy/connectors/login/refresh") as response:
        assert response.status == 200
    assert await warm(client, proxy, upstream) != before  # the new generation's link
    assert len(exchanges(idp)) == 2


def test_check_names_every_bad_subject_connector(write_config: WriteConfig) -> None:
    def exchanging(subject: str) -> dict[str, Any]:
        auth = {
            "type": "oauth2",
            "grant": "token_exchange",
            "token_url": "https://sts.example/token",
            "subject_connector": subject,
            "actor_token": ACTOR,
            "actor_token_type": ACCESS_TOKEN_TYPE,
        }
        return {"route": f"/{subject}-x", "upstream": "https://a.example", "auth": auth}

    static = {
        "route": "/s",
        "upstream": "https://a.example",
        "auth": {"type": "static", "token": SUBJECT},
    }
    connectors = {
        "a": exchanging("missing"),
        "b": exchanging("b"),
        "c": exchanging("d"),
        "d": exchanging("c"),
        "e": exchanging("s"),
        "s": static,
    }
    result = tokenproxy("check", "-c", str(write_config({"connectors": connectors})))
    assert result.returncode == 1
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "connectors.a.auth.subject_connector: no connector named 'missing'",
        "connectors.b.auth.subject_connector: names its own connector",
        "connectors.e.auth.subject_connector: connector 's' issues no tokens (its auth must "
        "be of type oauth2 or custom)",
        "connectors.c.auth.subject_connector: a cycle (c -> d -> c)",
        "connectors.d.auth.subject_connector: a cycle (d -> c -> d)",
    ]
    assert SUBJECT not in result.stdout + result.stderr
    assert ACTOR not in result.stdout + result.stderr


async def test_subject_and_actor_tokens_never_reach_logs_errors_or_status(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    idp.actor_tokens[ACTOR] = ACCESS_TOKEN_TYPE
    idp.script.append(answer(400, {"error": "invalid_grant", "error_description": SUBJECT}))
    proxy = await start_exchange(
        start_proxy, upstream, clock, idp, actor_token=ACTOR, actor_token_type=ACCESS_TOKEN_TYPE
    )
    texts = await failed_then_served(client, proxy, upstream, clock)
    for secret in (SUBJECT, ACTOR):
        for text in (caplog.text, *texts):
            assert secret not in text


async def test_tokenproxy_token_brings_the_subject_connector_along(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    api = connector(upstream.url, auth=exchange_auth(idp, subject_connector="login"))
    login = {**oauth2_connector(upstream.url, idp.url), "route": "/login"}
    other = {**connector(upstream.url), "route": "/other"}  # not needed: not opened
    path = write_config({"connectors": {"other": other, "api": api, "login": login}})
    shown = await asyncio.to_thread(tokenproxy, "token", "api", "-c", str(path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("api: Authorization: Bearer ")
    assert len(exchanges(idp)) == 1


@pytest.mark.parametrize("warmup", [False, True])
async def test_a_restart_adopts_the_exchanged_token_from_the_store(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    warmup: bool,
) -> None:
    """Warm-up adopts it before any subject token is known here: still no new exchange."""
    api = connector(upstream.url, auth=exchange_auth(idp, subject_connector="login"))
    api["warmup"] = warmup
    login = {**oauth2_connector(upstream.url, idp.url), "route": "/login"}
    config = {"state_dir": str(tmp_path / "state"), "connectors": {"api": api, "login": login}}
    for _ in range(2):
        proxy = await start_proxy(config, clock)
        async with client.get(f"{proxy.url}/api/x") as response:
            assert response.status == 200
        await proxy.server.stop()
    assert len(exchanges(idp)) == 1


async def test_a_subject_token_file_is_read_again_for_each_exchange(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    subject = tmp_path / "projected-token"
    rotated = ["SUBJECTcanary-projected-one-1", "SUBJECTcanary-projected-two-2"]
    for value in rotated:
        idp.subject_tokens[value] = JWT_TYPE
    auth = exchange_auth(idp, subject_token_file=str(subject), subject_token_type=JWT_TYPE)
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, auth=auth)}}, clock)
    for value in rotated:  # the platform rotates the file in place
        subject.write_text(value + "\n")
        async with client.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
            assert response.status == 200, await response.text()
    assert exchanges(idp) == rotated
    subject.unlink()
    async with client.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
        body = await response.json()
    assert body["message"] == "cannot read subject_token_file (No such file or directory)"
    assert str(tmp_path) not in body["message"]
    assert not [value for value in rotated if value in caplog.text]
