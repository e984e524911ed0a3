"""The token store: state that survives restarts and is shared by every process on a
machine (``state_dir``), against a provider that revokes a grant when a refresh token is
used twice, as certified ones do."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import validate
from proxy.config.models import Auth
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.secrets.envelope import KEY_ENV, MasterKeys, generate_key
from proxy.store.files import FileStore
from proxy.store.records import TokenRecord, token_key, token_material
from tests.conftest import StartProxy, WriteConfig, http_status, oauth2_connector
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream
from tests.test_cli import running
from tests.test_token_admin import tokenproxy_token


def rotating(upstream: RecordingUpstream, idp: FakeIdP, seed: str) -> dict[str, Any]:
    auth = {"grant": "refresh_token", "refresh_token": seed}
    return {"connectors": {"api": oauth2_connector(upstream.url, idp.url, **auth)}}


async def test_restarts_resume_from_the_rotated_refresh_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    """Each start once sent the config's seed again: the provider saw a reuse and revoked
    the grant. Now the stored, rotated refresh token wins."""
    config = rotating(upstream, idp, idp.seed_refresh_token())
    for _ in range(3):
        proxy = await start_proxy(config, clock)
        assert await http_status(client, proxy.url) == 200
        await proxy.server.stop()
        clock.advance(400)  # the access token is gone too: the next start must renew
    assert idp.grants == ["refresh_token"] * 3
    assert not idp.reuse_detected


async def test_a_restart_with_a_valid_stored_token_makes_no_token_request(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    config = rotating(upstream, idp, idp.seed_refresh_token())
    first = await start_proxy(config, clock)
    assert await http_status(client, first.url) == 200
    await first.server.stop()
    clock.advance(100)
    second = await start_proxy(config, clock)
    assert await http_status(client, second.url) == 200
    async with client.get(f"{second.url}/_proxy/connectors") as response:
        described = (await response.json())["connectors"][0]
    assert (described["source"], described["expires_in"]) == ("store", 200)
    assert len(idp.calls) == 1
    assert len({v for r in upstream.requests for k, v in r["headers"] if k == "Authorization"}) == 1


async def test_a_changed_seed_wins_over_the_stored_refresh_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    """An operator who consents again and configures the new refresh token means it."""
    proxy = await start_proxy(rotating(upstream, idp, idp.seed_refresh_token()), clock)
    assert await http_status(client, proxy.url) == 200
    await proxy.server.stop()
    new_seed = idp.seed_refresh_token()
    proxy = await start_proxy(rotating(upstream, idp, new_seed), clock)
    assert await http_status(client, proxy.url) == 200
    assert [call["form"]["refresh_token"] for call in idp.calls][1] == new_seed
    assert not idp.reuse_detected


async def test_the_token_command_beside_a_running_proxy_shares_the_grant(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    config = rotating(upstream, idp, idp.seed_refresh_token())
    proxy = await start_proxy(config)  # real clocks: two processes
    assert await http_status(client, proxy.url) == 200
    path = write_config({**config, "listen": {"host": "127.0.0.1", "port": 0}})
    result = await asyncio.to_thread(tokenproxy_token, path, "api")
    assert "read from the token store" in result.stdout  # the proxy's token, no request
    result = await asyncio.to_thread(tokenproxy_token, path, "api", "--fresh")
    assert result.returncode == 0, result.stderr  # rotated the grant, through the store
    async with client.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
        assert response.status == 200  # the proxy renews with the newest refresh token
    assert await http_status(client, proxy.url) == 200
    assert idp.grants == ["refresh_token"] * 3
    assert not idp.reuse_detected


async def test_workers_on_one_machine_make_one_token_request(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    idp.delay = 0.3  # a cold burst arrives in both workers while the first request runs
    idp.expires_in = 4
    path = write_config({"connectors": {"api": oauth2_connector(upstream.url, idp.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", "2")
    async with running(*args, ready=r"(listening on .*\n.*){2}", drain=True) as (_, output):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{port}"
        sessions = [aiohttp.ClientSession() for _ in range(20)]  # 20 pools: both workers
        try:
            statuses = await asyncio.gather(
                *(http_status(sessions[i % 20], url) for i in range(200))
            )
            assert statuses == [200] * 200
            tokens = {v for r in upstream.requests for k, v in r["headers"] if k == "Authorization"}
            assert len(tokens) == 1
            assert len(idp.calls) == 1
            # Steady traffic over 5 s with 4 s tokens (renewed every 2 s, the margin being
            # half the lifetime): 2 or 3 token requests for both workers, not 5 or 6.
            idp.delay = 0.05
            loop = asyncio.get_running_loop()
            end = loop.time() + 5
            upstream.requests.clear()

            async def steady(session: aiohttp.ClientSession) -> None:
                while loop.time() < end:
                    assert await http_status(session, url) == 200
                    await asyncio.sleep(0.02)

            before = len(idp.calls)
            await asyncio.gather(*(steady(session) for session in sessions))
        finally:
            for session in sessions:
                await session.close()
    renewals = len(idp.calls) - before
    assert 2 <= renewals <= 3, renewals


def test_the_store_is_encrypted_private_and_tamper_evident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, generate_key())
    store = FileStore(tmp_path / "state", MasterKeys.from_environment())
    record = TokenRecord("k1", "seed", "tok_CANARY_stored", 1.8e9, 300, "tok_CANARY_refresh")
    asyncio.run(store.write(record))
    (path,) = (tmp_path / "state").glob("token-k1.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"CANARY" not in path.read_bytes()
    assert asyncio.run(store.read("k1")) == record
    sealed = path.read_bytes()
    path.write_bytes(sealed[:-4] + (b"AAAA" if not sealed.endswith(b"AAAA") else b"BBBB"))
    assert asyncio.run(store.read("k1")) is None  # tampered: a miss
    path.write_bytes(sealed)
    os.rename(path, path.with_name("token-k2.json"))
    assert asyncio.run(store.read("k2")) is None  # another key's entry: a miss


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"scopes": ["read", "write"]}, False),
        ({"audience": "https://other"}, False),
        ({"client_id": "someone-else"}, False),
        ({"token_url": "https://idp.example/other"}, False),
        ({"grant": "password", "username": "u", "password": "p"}, False),
        ({"client_secret": "a-new-secret"}, True),
        ({"extra_params": {"resource": "https://tenant-b"}}, False),
        ({"headers": {"X-Tenant": "b"}}, False),
        ({"refresh_margin": 5, "reauth_on": [401, 403], "header": "X-Token"}, True),
    ],
)
def test_a_token_is_keyed_by_what_defines_it(change: dict[str, Any], same: bool) -> None:
    """Row E4: a changed scope, audience, client or endpoint is another token, never a stale
    one served under the old settings; how a token is sent, or a rotated secret, is not."""
    base = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": "https://idp.example/t",
        "client_id": "c",
        "client_secret": "s",
        "scopes": ["read"],
    }
    keys = MasterKeys(bytes(32))
    key = token_key("api", validate(OAuth2AuthConfig, base), keys)
    changed = validate(OAuth2AuthConfig, {**base, **change})
    assert (token_key("api", changed, keys) == key) is same
    assert token_key("other", changed, keys) != token_key("api", changed, keys)


# What names the stored tokens of these auth blocks, as the release before config blocks
# were dataclasses computed it (pydantic models): a refresh token stored then must be found.
_MATERIAL_OF_EARLIER_RELEASES = [
    (
        {
            "type": "custom",
            "token_request": {
                "url": "https://idp.example.com/t",
                "query": {"q": "{{client_id}}"},
                "headers": {"H": "v"},
                "body": {"a": "{{client_id}}", "n": {"d": 1}},
                "body_format": "json",
            },
            "refresh_request": {
                "url": "https://idp.example.com/r",
                "access_token_path": "$.data.tok",
            },
            "access_token_path": "data.token",
            "expires_path": "$.exp",
            "expires_type": "epoch_seconds",
            "client_id": "zz",
            "refresh_margin": 10,
        },
        "x",
        "9f6acef8a7c15bbe5339bc3bf8e2a959520390bcac33eaa932a6e66c7fb04371",
    ),
    (
        {
            "type": "oauth2",
            "grant": "jwt_bearer",
            "token_url": "https://idp.example.com/token",
            "assertion": {
                "issuer": "me",
                "private_key": "PEMKEY",
                "claims": {"scope": "z", "n": 2},
                "lifetime": 100,
            },
        },
        "jb",
        "61c48f4704ae76e1084918ba643f151d20899760aa7b8d5ae753d21aadc0d325",
    ),
]


@pytest.mark.parametrize(
    ("auth", "connector", "digest"), _MATERIAL_OF_EARLIER_RELEASES, ids=["custom", "jwt_bearer"]
)
def test_stored_tokens_keep_their_names_across_releases(
    auth: dict[str, Any], connector: str, digest: str
) -> None:
    material = token_material(connector, validate(Auth, auth))
    assert hashlib.sha256(material).hexdigest() == digest, material


async def test_a_used_seed_is_never_sent_again_after_the_grant_is_lost(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    """The grant is revoked (a person withdrew consent): the connector needs a new seed.
    A restart must not resend the config's seed, which was rotated away long ago."""
    seed = idp.seed_refresh_token()
    config = rotating(upstream, idp, seed)
    proxy = await start_proxy(config, clock)
    assert await http_status(client, proxy.url) == 200
    for family in idp.families.values():
        family.revoked = True
    clock.advance(400)
    assert await http_status(client, proxy.url) == 502
    await proxy.server.stop()
    proxy = await start_proxy(config, clock)
    assert await http_status(client, proxy.url) == 502
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        assert (await response.json())["connectors"][0]["state"] == "needs_refresh_token"
    sent = [call["form"].get("refresh_token") for call in idp.calls]
    assert sent.count(seed) == 1


async def test_a_store_that_cannot_be_written_holds_the_token_back_and_loses_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full disk during a rotation: the new token is not handed out unpersisted, and
    the rotated refresh token is neither lost nor stepped back from once the disk recovers."""
    proxy = await start_proxy(rotating(upstream, idp, idp.seed_refresh_token()), clock)
    assert await http_status(client, proxy.url) == 200
    write = FileStore._write

    def full(self: FileStore, record: TokenRecord) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileStore, "_write", full)
    clock.advance(400)
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
        assert (await response.json())["message"] == "the token store cannot be written"
    monkeypatch.setattr(FileStore, "_write", write)
    clock.advance(2)  # past the back-off
    assert await http_status(client, proxy.url) == 200
    assert idp.grants == ["refresh_token"] * 2  # the rotated token was used, not replayed
    assert not idp.reuse_detected
