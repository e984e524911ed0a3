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
import pytest
import trustme
from aiohttp import web

from tests.conftest import (
    RunningProxy,
    StartProxy,
    WriteConfig,
    connector,
    eventually,
    http_status,
    oauth2_connector,
)
from tests.fakes import FakeIdP, RecordingUpstream, TLSServer
from tests.test_cli import _stop, running
from tests.test_tls import peer_subject, server_context


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
    write_config({"listen": {"host": "127.0.0.1", "port": 0}, "connectors": {
        "api": api, "other": other, "new": new,
    }})  # fmt: skip
    status, body = await reload(client, proxy)
    assert status == 200 and body["status"] == "reloaded" and body["kept_tokens"] == ["api"]
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
    release = asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="finished")

    upstream.respond = slow
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    in_flight = asyncio.ensure_future(client.get(f"{proxy.url}/api/slow"))
    await eventually(lambda: _received(upstream), within=5)
    write_config({"connectors": {"other": connector(upstream.url, route="/other")}})
    assert (await reload(client, proxy))[0] == 200
    assert await http_status(client, proxy, "/api/x") == 404  # new requests: the new config
    release.set()
    async with asyncio.timeout(5):
        response = await in_flight
    assert response.status == 200 and await response.text() == "finished"
    response.release()


async def _received(upstream: RecordingUpstream) -> bool:
    return bool(upstream.requests)


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


@pytest.mark.parametrize("probe", ["/_proxy/ready"])
async def test_readiness_turns_503_while_draining(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
    probe: str,
) -> None:
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url)}})
    assert await http_status(client, proxy, probe) == 200
    proxy.server.begin_drain()
    async with client.get(proxy.url + probe) as response:
        assert response.status == 503 and (await response.json())["status"] == "draining"
