"""Device authorization (RFC 8628): ``tokenproxy authorize`` once, then refresh tokens in the
token store, for the proxy and every process that shares the store."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.tokens.manager import TokenManager
from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    device_flow,
    eventually,
    oauth2_connector,
    status_and_message,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream


def device_connector(upstream: RecordingUpstream, idp: FakeIdP) -> dict[str, Any]:
    return {
        "connectors": {
            "api": oauth2_connector(
                upstream.url,
                idp.url,
                grant="device_code",
                device_authorization_url=f"{idp.url}/device",
                scopes=["offline_access", "read"],
            )
        }
    }


def manager_of(proxy: RunningProxy) -> TokenManager:
    manager = proxy.server.runtime.connectors["api"].authenticator  # type: ignore[union-attr]
    assert isinstance(manager, TokenManager)
    return manager


def approving(idp: FakeIdP, lines: list[str], *, deny: bool = False) -> Any:
    """A ``say`` that approves (or denies) the user code as soon as it is shown."""

    def say(line: str) -> None:
        lines.append(line)
        found = re.search(r"enter the code (\w+)", line)
        if found:
            idp.approve(found.group(1), deny=deny)

    return say


async def test_authorize_once_then_serve_and_renew_from_the_store(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(device_connector(upstream, idp), clock)
    code, message = await status_and_message(client, proxy)
    assert code == 503 and "not authorized: run `tokenproxy authorize api`" in message
    async with client.get(f"{proxy.url}/_proxy/connectors") as response:
        assert (await response.json())["connectors"][0]["state"] == "needs_authorization"
    idp.device_answers = ["authorization_pending", "slow_down"]
    lines: list[str] = []
    started = clock.monotonic()
    await manager_of(proxy).authorize(device_flow(approving(idp, lines)))
    assert lines[0].startswith(f"Open {idp.url}/activate and enter the code ")
    assert any("every 5.1 s" in line for line in lines)  # slow_down: 5 s more, for good
    assert clock.monotonic() - started == pytest.approx(0.1 + 0.1 + 5.1)  # three polls
    device_call = idp.calls[0]
    assert (
        device_call["path"] == "/device" and device_call["form"]["scope"] == "offline_access read"
    )
    assert (await status_and_message(client, proxy))[0] == 200
    clock.advance(400)  # expired: renewed with the refresh token the device flow brought
    assert (await status_and_message(client, proxy))[0] == 200
    assert idp.grants[-1] == "refresh_token" and not idp.reuse_detected
    await proxy.server.stop()
    clock.advance(400)
    restarted = await start_proxy(device_connector(upstream, idp), clock)
    assert (await status_and_message(client, restarted))[
        0
    ] == 200  # the store kept the newest refresh token
    assert not idp.reuse_detected


@pytest.mark.parametrize(
    ("outcome", "message"),
    [("denied", "the authorization was denied"), ("expired", "the user code expired")],
)
async def test_a_denied_or_expired_authorization_changes_nothing(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    outcome: str,
    message: str,
) -> None:
    proxy = await start_proxy(device_connector(upstream, idp), clock)
    idp.device_expires_in = 2
    lines: list[str] = []
    say = approving(idp, lines, deny=True) if outcome == "denied" else lines.append
    with pytest.raises(Exception, match=message):
        await manager_of(proxy).authorize(device_flow(say))
    assert (await status_and_message(client, proxy))[0] == 503
    assert "refresh_token" not in idp.grants


async def test_the_authorize_command_beside_a_running_proxy(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    config = device_connector(upstream, idp)
    proxy = await start_proxy(config)  # the real clock: two processes share the store
    assert (await status_and_message(client, proxy))[0] == 503
    path = write_config({**config, "listen": {"host": "127.0.0.1", "port": 0}})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "authorize", "api", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    async with asyncio.timeout(20):
        first = (await process.stdout.readline()).decode()
        idp.approve(re.search(r"enter the code (\w+)", first).group(1))  # type: ignore[union-attr]
        rest = (await process.stdout.read()).decode()
        assert await process.wait() == 0, first + rest
    assert "api: authorized; the refresh token is kept in the token store" in rest

    async def serving() -> bool:
        return (await status_and_message(client, proxy))[0] == 200

    await eventually(serving, within=5)  # the proxy finds it in the store within a second


def test_device_code_needs_its_endpoint(write_config: WriteConfig, tmp_path: Path) -> None:
    from tests.test_config import problems_of

    auth = {"type": "oauth2", "grant": "device_code", "token_url": "https://idp.example/t"}
    config = {
        "connectors": {"api": {"route": "/api", "upstream": "https://u.example", "auth": auth}}
    }
    (problem,) = problems_of(write_config(config))
    assert problem.endswith("needs client_id, client_secret, device_authorization_url")


@pytest.mark.parametrize("name", ["api", "nope"])
def test_authorize_refuses_what_has_nothing_to_authorize(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP, name: str
) -> None:
    from tests.test_cli import tokenproxy

    path = write_config({"connectors": {"api": oauth2_connector(upstream.url, idp.url)}})
    result = tokenproxy("authorize", name, "-c", str(path))
    assert result.returncode == 1
    expected = {
        "api": "tokenproxy: connector 'api' has no interactive grant",
        "nope": "tokenproxy: no connector 'nope' (connectors: api)",
    }[name]
    assert result.stderr.startswith(expected), result.stderr
    assert idp.calls == []
