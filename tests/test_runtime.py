"""The build step: prepared once, every problem at once, and nothing left open on any path."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import load_settings
from proxy.errors import ConfigError
from proxy.http.server import GC_YOUNG_THRESHOLD, ProxyServer, serve
from proxy.runtime import open_runtime, prepare
from tests.conftest import WriteConfig, connector, eventually, oauth2_connector
from tests.fakes import FakeIdP, RecordingUpstream


def leaks(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Resources garbage collection finds unclosed: aiohttp's 'Unclosed client session'
    (a ResourceWarning and a loop exception-handler call) and asyncio's pending tasks."""
    reports: list[str] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reports.append(context["message"]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        reports.extend(str(w.message) for w in caught)
    finally:
        loop.set_exception_handler(previous)
    return reports


def two_connectors(upstream: RecordingUpstream, idp: FakeIdP, **listen: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", **listen},
        "connectors": {
            "static": connector(upstream.url, route="/static"),
            "api": {**oauth2_connector(upstream.url, idp.url), "warmup": True},
        },
    }


async def test_a_failed_start_closes_everything_it_opened(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        settings = load_settings(write_config(two_connectors(upstream, idp, port=port))).settings
        server = ProxyServer(settings)
        with pytest.raises(OSError):
            await server.start()
        assert server.runtime is None and server.port is None
        await server.stop()  # a no-op after a failed start
    finally:
        taken.close()
    del server
    assert leaks(asyncio.get_running_loop()) == []
    assert idp.calls == []  # the warm-up never started


async def test_stop_awaits_the_warm_ups_and_closes_every_session(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    idp.delay = 5  # the warm-up is still waiting for its token when the proxy stops
    settings = load_settings(write_config(two_connectors(upstream, idp, port=0))).settings
    server = ProxyServer(settings)
    await server.start()
    assert server.runtime is not None
    sessions = [c.upstream for c in server.runtime.connectors.values()]

    async def fetching() -> None:
        while not idp.calls:  # noqa: ASYNC110 - the fake offers no event
            await asyncio.sleep(0.01)

    await asyncio.wait_for(fetching(), 5)
    async with asyncio.timeout(3):
        await server.stop()
    assert all(session.closed for session in sessions)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    pending = [t for t in others if "warm" in repr(t.get_coro())]
    assert pending == []
    del server, sessions
    assert leaks(asyncio.get_running_loop()) == []


async def test_check_builds_and_discards_without_network_io(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    settings = load_settings(write_config(two_connectors(upstream, idp, port=0))).settings
    plan = prepare(settings)
    async with open_runtime(plan) as runtime:
        sessions = [c.upstream for c in runtime.connectors.values()]
    assert all(session.closed for session in sessions)
    assert idp.calls == [] and upstream.requests == []


def test_every_material_problem_is_listed_once(write_config: WriteConfig, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    config = {
        "connectors": {
            "a": connector("https://a.example", tls={"ca_file": missing}),
            "b": {
                **oauth2_connector("https://b.example", "https://idp.example"),
                "tls": {"ca_file": missing},
            },
            "c": {
                **oauth2_connector("https://c.example", "https://idp.example"),
                "route": "/c",
            },
        }
    }
    config["connectors"]["b"]["route"] = "/b"
    config["connectors"]["c"]["auth"].update(client_auth="private_key_jwt", private_key="nope")
    settings = load_settings(write_config(config)).settings
    with pytest.raises(ConfigError) as info:
        prepare(settings)
    reason = "(No such file or directory)"
    assert info.value.problems == [
        f"connectors.a.tls.ca_file: cannot read {missing} {reason}",
        f"connectors.b.tls.ca_file: cannot read {missing} {reason}",
        "connectors.c.auth.private_key: must be an unencrypted PEM private key",
    ]


def test_build_problems_never_show_the_material(write_config: WriteConfig) -> None:
    canary = "sec_CANARY_build_5e4d"
    pem_like = f"-----BEGIN PRIVATE KEY-----\n{canary}\n-----END PRIVATE KEY-----\n"
    config = {
        "connectors": {
            "a": {
                **oauth2_connector("https://a.example", "https://idp.example"),
                "tls": {"ca_pem": f"-----BEGIN CERTIFICATE-----\n{canary}\n"},
            }
        }
    }
    config["connectors"]["a"]["auth"].update(client_auth="private_key_jwt", private_key=pem_like)
    with pytest.raises(ConfigError) as info:
        prepare(load_settings(write_config(config)).settings)
    assert len(info.value.problems) == 2
    assert canary not in str(info.value) and canary not in repr(info.value)


async def test_serving_freezes_what_the_start_built_and_collects_young_objects_less_often(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    """The garbage collector no longer scans the start-up heap for every few requests."""
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "connectors": {"api": connector(upstream.url)},
    }
    settings = load_settings(write_config(config)).settings
    threshold = gc.get_threshold()
    stop = asyncio.Event()
    serving = asyncio.get_running_loop().create_task(serve(settings, stop))

    async def settled() -> bool:
        return gc.get_threshold()[0] == GC_YOUNG_THRESHOLD

    try:
        await eventually(settled)
        assert gc.get_freeze_count() > 0
    finally:
        stop.set()
        await asyncio.wait_for(serving, 10)
        gc.unfreeze()  # this test process's collector as it was
        gc.set_threshold(*threshold)
