"""Hot reload and graceful drain: a new config takes over without dropping traffic or
tokens, a broken one is refused whole, certificates are read again, in-flight requests finish
on the config they started with; SIGHUP reaches every worker; SIGTERM drains."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    connector,
    eventually,
    hold_answers,
    http_status,
    oauth2_connector,
    upstream_received,
)
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, TLSServer
from tests.test_cli import _stop, running
from tests.test_tls import peer_subject, server_context
from tests.test_token_store import rotating


async def reload(client: aiohttp.ClientSession, proxy: RunningProxy) -> tuple[int, Any]:
    async with client.post(f"{proxy.url}/_proxy/reload") as response:
        return response.status, await response.json()


async def test_a_reload_keeps_unchanged_tokens_and_applies_the_rest(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    api = oauth2_connector(upstream.url, idp.url)
    other = {**oauth2_connector(upstream.url, idp.url, scopes=["a"]), "route": "/other"}
    proxy = await start_proxy({"connectors": {"api": api, "other": other}})
    for route in ("api", "other"):
        assert await http_status(client, proxy, f"/{route}/x") == 200
    assert len(idp.calls) == 2
    # Injection and lifetime settings change, scopes of `other` change, a connector is new.
    api["auth"] |= {"header": "X-Token", "token_prefix": "", "refresh_margin": 30}
    other["auth"]["scopes"] = ["b"]
    new = connector(upstream.url, route="/new")
    write_config({"listen": {"port": 0}, "server": {"keepalive_timeout": 5}, "connectors": {
        "api": api, "other": other, "new": new,
    }})  # fmt: skip
    status, body = await reload(client, proxy)
    assert status == 200 and body["status"] == "reloaded" and body["kept_tokens"] == ["api"]
    assert body["warnings"] == [
        "server.keepalive_timeout changes only with a restart; the running value stays"
    ]
    assert await http_status(client, proxy, "/api/x") == 200
    (sent,) = upstream.header_values("X-Token")  # the new header, the same token
    assert sent in idp.issued and len(idp.calls) == 2  # the provider was not asked again
    assert await http_status(client, proxy, "/other/x") == 200
    assert len(idp.calls) == 3  # its scopes changed: a token of its own
    assert await http_status(client, proxy, "/new/x") == 200


async def test_a_broken_file_is_refused_whole_and_the_old_config_serves(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    write_config({"connectors": {
        "api": connector(upstream.url, route="/moved"),
        "bad": {"route": "/b", "upstream": "ftp://x", "auth": {"type": "static"}},
    }})  # fmt: skip
    status, body = await reload(client, proxy)
    assert status == 400 and body["status"] == "refused"
    assert any(p.startswith("connectors.bad.upstream") for p in body["problems"])
    assert any(p.startswith("connectors.bad.auth") for p in body["problems"])
    assert await http_status(client, proxy, "/api/x") == 200  # untouched
    assert await http_status(client, proxy, "/moved/x") == 404


async def test_rotated_certificate_files_apply_on_reload(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    client: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    context = server_context(ca.issue_cert("127.0.0.1"), client_ca=ca)
    upstream = await TLSServer(peer_subject, context).start()
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem.bytes())

    def issue(name: str) -> None:  # what a certificate manager does: new files, same paths
        leaf = ca.issue_cert(name, common_name=name)
        (tmp_path / "client.crt").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        (tmp_path / "client.key").write_bytes(leaf.private_key_pem.bytes())

    issue("first")
    tls = {
        "ca_file": str(tmp_path / "ca.pem"),
        "cert_file": str(tmp_path / "client.crt"),
        "key_file": str(tmp_path / "client.key"),
    }
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, tls=tls)}})

    async def client_name() -> str:
        async with client.get(f"{proxy.url}/api/x") as response:
            return str((await response.json())["client"])

    assert await client_name() == "first"
    issue("second")
    assert await client_name() == "first"  # read once: until the reload
    assert (await reload(client, proxy))[0] == 200
    assert await client_name() == "second"
    await upstream.close()


async def test_in_flight_requests_finish_on_the_old_config(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    release = hold_answers(upstream)
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    in_flight = asyncio.ensure_future(client.get(f"{proxy.url}/api/slow"))
    await eventually(lambda: upstream_received(upstream), within=5)
    write_config({"connectors": {"other": connector(upstream.url, route="/other")}})
    assert (await reload(client, proxy))[0] == 200
    assert await http_status(client, proxy, "/api/x") == 404  # new requests: the new config
    release.set()
    async with asyncio.timeout(5):
        response = await in_flight
    assert response.status == 200 and await response.text() == "finished"
    response.release()


async def test_sighup_reloads_every_worker(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", "2")
    async with running(*args, ready=r"(listening on .*\n.*){2}") as (process, output):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        config = {
            "connectors": {
                "api": connector(upstream.url),
                "new": connector(upstream.url, route="/new"),
            }
        }
        write_config(config)
        process.send_signal(signal.SIGHUP)

        async def every_worker_serves_it() -> bool:
            statuses = set()
            for _ in range(20):  # a new connection each time: both workers answer
                async with aiohttp.ClientSession() as session:
                    statuses.add(await http_status(session, f"http://127.0.0.1:{port}", "/new/x"))
            return statuses == {200}

        await eventually(every_worker_serves_it, within=10)
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0 and rest.count("reloaded: 2 connector(s)") == 2


async def test_sigterm_lets_a_slow_stream_finish(
    write_config: WriteConfig, aiohttp_raw_server: Any
) -> None:
    async def streaming(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for part in (b"first,", b"second,", b"last"):
            await response.write(part)
            await asyncio.sleep(0.3)
        await response.write_eof()
        return response

    upstream = await aiohttp_raw_server(streaming)
    path = write_config({"connectors": {"api": connector(str(upstream.make_url("")))}})
    args = ("run", "-c", str(path), "--port", "0")
    async with running(*args, ready=r"listening on http") as (process, output):
        port = re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/api/stream") as response:
                first = await response.content.readexactly(6)
                process.send_signal(signal.SIGTERM)  # mid-stream
                rest_of_body = await response.read()
        assert process.stdout is not None
        async with asyncio.timeout(10):
            log = (await process.stdout.read()).decode()
            code = await process.wait()
    assert first + rest_of_body == b"first,second,last"
    assert code == 0 and "draining" in log


async def test_readiness_turns_503_at_once_while_drain_delay_keeps_serving(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    config = {"server": {"drain_delay": 1.5}, "connectors": {"api": connector(upstream.url)}}
    path = write_config(config)
    args = ("run", "-c", str(path), "--port", "0")
    async with running(*args, ready=r"listening on http") as (process, output):
        base = "http://127.0.0.1:" + re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            assert await http_status(session, base, "/_proxy/ready") == 200
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with session.get(f"{base}/_proxy/ready") as response:  # a new connection
                assert response.status == 503 and (await response.json())["status"] == "draining"
            assert await http_status(session, base, "/api/x") == 200  # still served
        assert process.stdout is not None
        async with asyncio.timeout(10):
            rest = (await process.stdout.read()).decode()
            assert await process.wait() == 0
    assert "/ready answers 503 for 1.5s" in rest


async def test_a_new_seed_refresh_token_starts_a_new_chain_on_reload(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(rotating(upstream, idp, idp.seed_refresh_token("alice")), clock)
    assert await http_status(client, proxy) == 200
    new_seed = idp.seed_refresh_token("bob")  # the operator switches accounts
    write_config(rotating(upstream, idp, new_seed))
    status, body = await reload(client, proxy)
    assert status == 200 and body["kept_tokens"] == []
    clock.advance(400)
    assert await http_status(client, proxy) == 200
    assert idp.calls[-1]["form"]["refresh_token"] == new_seed


async def test_a_reload_during_a_renewal_loses_no_rotated_refresh_token(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    """The provider rotates, then answers slowly; the old generation closes meanwhile."""
    proxy = await start_proxy(rotating(upstream, idp, idp.seed_refresh_token()), clock)
    assert await http_status(client, proxy) == 200

    async def rotates_then_answers_slowly(request: web.BaseRequest) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        answer = idp.grant(request, form)  # rotated now: the old refresh token is spent
        await asyncio.sleep(0.5)
        return web.json_response(answer)

    idp.script = [rotates_then_answers_slowly]
    clock.advance(245)  # renewable: this request starts a renewal in the background
    assert await http_status(client, proxy) == 200
    await eventually(lambda: _asked(idp, 2), within=5)
    assert (await reload(client, proxy))[0] == 200
    await asyncio.sleep(0.8)  # the old generation let the renewal finish, then closed
    clock.advance(400)
    assert await http_status(client, proxy) == 200
    assert not idp.reuse_detected


async def _asked(idp: FakeIdP, times: int) -> bool:
    return len(idp.calls) >= times
