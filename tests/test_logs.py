"""JSON logs and request ids: every line an object with the contract's fields, the id taken
from the client or made, forwarded upstream, returned and logged; token lifecycle events
with their connector and error code; nothing secret in any field."""

from __future__ import annotations

import json
import logging
import re
import signal
from typing import Any

import aiohttp
import pytest

from proxy.log_output import JsonFormatter
from tests.conftest import StartProxy, WriteConfig, connector, oauth2_connector, raw_request
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream, answer
from tests.test_cli import _stop, running

CANARY = "tok_CANARY_static_7f3a"


async def test_json_lines_carry_the_request_fields_and_the_request_id(
    write_config: WriteConfig, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    auth = {"type": "static", "token": CANARY}
    path = write_config({"connectors": {"api": connector(upstream.url, auth=auth)}})
    args = ("run", "-c", str(path), "--port", "0", "--log-format", "json")
    async with running(*args, ready=r"listening on http") as (process, output):
        port = re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        async with client.get(f"{base}/api/x?key=q", headers={"X-Request-ID": "abc-123"}) as r:
            assert r.headers["X-Request-ID"] == "abc-123"
        async with client.get(f"{base}/nowhere") as r:  # the proxy's own error has one too
            made = r.headers["X-Request-ID"]
            assert re.fullmatch(r"[0-9a-f]{32}", made)
        async with client.get(f"{base}/api/y", headers={"X-Request-ID": "bad id\t"}) as r:
            replaced = r.headers["X-Request-ID"]
            assert replaced != "bad id\t" and re.fullmatch(r"[0-9a-f]{32}", replaced)
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0
    lines = [json.loads(line) for line in (output + rest).splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "msg", "logger"} <= line.keys() for line in lines)
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"]) for line in lines
    )
    access = {line["request_id"]: line for line in lines if "status" in line}
    first = access["abc-123"]
    assert first["connector"] == "api" and first["method"] == "GET"
    assert first["path"] == "/api/x" and first["status"] == 200  # no query string
    assert first["client"] == "127.0.0.1" and first["bytes"] > 0
    assert first["duration_ms"] >= first["upstream_ms"] > 0
    assert round(first["upstream_ms"], 2) == first["upstream_ms"]  # milliseconds, 2 places
    assert access[made]["status"] == 404 and access[made].get("connector") is None
    assert upstream.header_values("X-Request-ID", 0) == ["abc-123"]  # forwarded upstream
    assert upstream.header_values("X-Request-ID", 1) == [replaced]
    assert CANARY not in output + rest and "key=q" not in output + rest


async def test_token_lifecycle_events_name_their_connector_and_error(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    proxy = await start_proxy(
        {"connectors": {"api": oauth2_connector(upstream.url, idp.url)}}, clock
    )
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 200
    clock.advance(400)
    idp.script = [answer(400, {"error": "invalid_client"})]
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 502
    clock.advance(60)
    async with client.get(f"{proxy.url}/api/x") as response:
        assert response.status == 200
    formatter = JsonFormatter()
    events: list[dict[str, Any]] = [
        json.loads(formatter.format(r)) for r in caplog.records if hasattr(r, "event")
    ]
    assert [(e["event"], e["level"]) for e in events] == [
        ("token_fetched", "info"),
        ("token_failed", "warning"),
        ("token_renewed", "info"),
        ("token_recovered", "info"),
    ]
    assert all(e["connector"] == "api" for e in events)
    assert events[1]["error"] == "invalid_client" and "backing off" in events[1]["msg"]
    for issued in idp.issued:
        assert issued not in caplog.text


def test_json_fields_are_scrubbed_too() -> None:
    from proxy.secrets.redaction import REDACTOR

    REDACTOR.add(["sec_CANARY_in_a_path_1"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "line", None, None)
    record.path = "/api/sec_CANARY_in_a_path_1/x"
    line = json.loads(JsonFormatter().format(record))
    assert line["path"] == "/api/***/x"


async def test_the_access_log_can_be_turned_off(
    write_config: WriteConfig, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    config = {"server": {"access_log": False}, "connectors": {"api": connector(upstream.url)}}
    path = write_config(config)
    args = ("run", "-c", str(path), "--port", "0", "--log-format", "json")
    async with running(*args, ready=r"listening on http") as (process, output):
        port = re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        async with client.get(f"http://127.0.0.1:{port}/api/x") as response:
            assert response.status == 200
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0 and '"status"' not in output + rest


async def test_a_clients_userinfo_never_reaches_the_log(
    start_proxy: StartProxy, upstream: RecordingUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    proxy = await start_proxy({"connectors": {"api": connector(upstream.url, hosts=["api.test"])}})
    request = b"GET http://alice:s3cretpw@api.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n"
    await raw_request(proxy.port, request, until_close=True)
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records] + [caplog.text]
    assert not any("s3cretpw" in line or "alice" in line for line in lines)
