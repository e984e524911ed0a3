"""The command line, run as a user runs it: ``python -m proxy ...`` in a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import connector, raw_request
from tests.fakes import RecordingUpstream

CANARY = "sec_CANARY_cli_5150"
WriteConfig = Callable[[dict[str, Any]], Path]


def tokenproxy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    result = tokenproxy("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"tokenproxy \d+\.\d+\.\d+\n", result.stdout)


def test_check_valid_config_lists_connectors_and_warnings(write_config: WriteConfig) -> None:
    path = write_config(
        {
            "connectors": {
                "crm": connector(
                    "http://api.example.com/v2", auth={"type": "static", "token": CANARY}
                ),
            }
        }
    )
    result = tokenproxy("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "warning: connectors.crm.upstream: plain http:// to api.example.com sends the injected "
        "credential unencrypted",
        f"{path}: valid, 1 connector(s)",
        "  crm: route /api: static -> http://api.example.com/v2",
    ]
    assert CANARY not in result.stdout + result.stderr


def test_check_invalid_config_exits_1_with_every_problem(write_config: WriteConfig) -> None:
    path = write_config(
        {
            "listen": {"port": "x"},
            "connectors": {
                "crm": {
                    "route": "/c",
                    "upstream": "ftp://x",
                    "auth": {"type": "static", "token": f"{CANARY}\n"},
                }
            },
        }
    )
    result = tokenproxy("check", "-c", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}: invalid configuration",
        "  listen.port: Input should be a valid integer, unable to parse string as an integer",
        "  connectors.crm.upstream: must be an absolute http:// or https:// URL",
        "  connectors.crm.auth.token: may hold only printable ASCII characters (no CR, LF or "
        "controls)",
    ]
    assert CANARY not in result.stderr


def test_check_reads_the_config_named_by_the_environment(write_config: WriteConfig) -> None:
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    result = tokenproxy("check", env={"TOKENPROXY_CONFIG": str(path)})
    assert result.returncode == 0
    assert result.stdout.startswith(f"{path}: valid")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--host", "0.0.0.0"], "listen.host: '0.0.0.0' is not a loopback address"),
        (["--port", "70000"], "listen.port: Input should be less than or equal to 65535"),
    ],
)
def test_run_refuses_an_invalid_config_with_exit_2(
    write_config: WriteConfig, args: list[str], problem: str
) -> None:
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    result = tokenproxy("run", "-c", str(path), *args)
    assert result.returncode == 2
    assert problem in result.stderr


@asynccontextmanager
async def running(
    *args: str, ready: str, env: dict[str, str] | None = None, drain: bool = False
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """Start ``python -m proxy ARGS``; yield once a line matching ``ready`` was printed.

    ``drain``: read (and drop) the rest of its output meanwhile, so heavy traffic cannot fill
    the pipe and stall its logging; at the end, SIGTERM it (its workers too) and wait.
    Logs are text (a pipe would get JSON) unless ``env`` says otherwise.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "TOKENPROXY_LOG_FORMAT": "text", **(env or {})},
    )
    assert process.stdout is not None
    output = ""
    try:
        async with asyncio.timeout(20):
            while not re.search(ready, output):
                line = await process.stdout.readline()
                assert line, f"exited before it was ready:\n{output}"
                output += line.decode()
        if not drain:
            yield process, output
            return
        dropping = asyncio.create_task(process.stdout.read())
        try:
            yield process, output
        finally:
            if process.returncode is None:
                process.terminate()
            async with asyncio.timeout(20):
                await process.wait()
                await dropping
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _stop(process: asyncio.subprocess.Process, sig: signal.Signals) -> tuple[int, str]:
    process.send_signal(sig)
    assert process.stdout is not None
    async with asyncio.timeout(20):
        rest = (await process.stdout.read()).decode()
        return await process.wait(), rest


async def test_run_serves_until_sigterm(
    write_config: WriteConfig, upstream: RecordingUpstream, client: aiohttp.ClientSession
) -> None:
    path = write_config(
        {"connectors": {"api": connector(upstream.url, auth={"type": "static", "token": CANARY})}}
    )
    args = ("run", "-c", str(path), "--port", "0", "--log-level", "debug")
    async with running(*args, ready=r"listening on http://127\.0\.0\.1:\d+") as (process, output):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        async with client.get(f"http://127.0.0.1:{port}/api/x?secret={CANARY}") as response:
            assert response.status == 200
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0
    assert upstream.header_values("Authorization") == [f"Bearer {CANARY}"]
    log = output + rest
    assert '"GET /api/x HTTP/1.1" 200' in log
    assert CANARY not in log


async def test_demo_prints_curl_lines_that_work(client: aiohttp.ClientSession) -> None:
    async with running("demo", "--port", "0", ready="Ctrl-C stops everything") as (process, output):
        urls = re.findall(r"curl -s '?(http://127\.0\.0\.1:\d+/echo/[^' ]*)'?", output)
        assert urls, output
        async with client.get(urls[0]) as response:
            assert response.status == 200
            echoed = await response.json()
        assert echoed["path"] == "/v1/hello"
        assert ["Authorization", "Bearer demo-static-token"] in echoed["headers"]
        oauth_url = next(url for url in re.findall(r"curl -s (\S+/echo-oauth/\S+)", output))
        async with client.get(oauth_url) as response:
            answer = await response.json()
            assert "headers" in answer, answer  # else the proxy's own error says why
            headers = dict(answer["headers"])
        assert headers["Authorization"].startswith("Bearer demo-at-")
        start = re.search(r"http://\S+/_proxy/oauth/echo-consent/start", output).group(0)  # type: ignore[union-attr]
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as browser:
            async with browser.get(start) as page:  # start -> the demo provider -> callback
                assert "now authorized as demo-user@example.test" in await page.text()
        consent_url = next(url for url in re.findall(r"curl -s (\S+/echo-consent/\S+)", output))
        async with client.get(consent_url) as response:
            assert response.status == 200
        code, _ = await _stop(process, signal.SIGINT)
    assert code == 0


async def test_workers_share_the_port_and_stop_together(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", "2")
    async with running(*args, ready=r"(listening on .*\n.*){2}") as (process, output):
        port = re.search(r"listening on http://127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        workers = set()
        for _ in range(40):  # a new connection each time: the kernel spreads them
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/_proxy/health") as response:
                    workers.add((await response.json())["worker"])
                async with session.get(f"http://127.0.0.1:{port}/api/x") as response:
                    assert response.status == 200
        assert len(workers) == 2 and process.pid not in workers
        # The supervising parent never loaded the server stack (it stays ~15 MB).
        mapped = await asyncio.to_thread(Path(f"/proc/{process.pid}/maps").read_text)
        assert "aiohttp" not in mapped and "pydantic_core" not in mapped
        code, _ = await _stop(process, signal.SIGTERM)
    assert code == 0


def test_workers_refuse_a_bad_config_once_and_warn_once(write_config: WriteConfig) -> None:
    bad = write_config({"connectors": {"a": connector("https://a.example", route="nope")}})
    result = tokenproxy("run", "-c", str(bad), "--port", "0", "--workers", "2")
    assert result.returncode == 2
    assert result.stderr.count("connectors.a.route: must start with '/'") == 1


def test_workers_must_be_positive(write_config: WriteConfig) -> None:
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    result = tokenproxy("run", "-c", str(path), "--workers", "0")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "tokenproxy: --workers must be 1 or more",
    )


BAD_REQUESTS = [
    b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-A: %s\x00b\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nX-A: %s\rb\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n%s : v\r\n\r\n",
    b"GET /api/x?%s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /api/x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: %s\r\n\r\n0\r\n\r\n",
    b"GET /api/%s\x7f HTTP/1.1\r\nHost: localhost\r\n\r\n",
]


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_parser_errors_never_log_the_request_bytes(
    write_config: WriteConfig, upstream: RecordingUpstream, parser: str
) -> None:
    """A client's header can hold the client's own secret: no log line may quote it, at any
    level, under either HTTP parser."""
    canary = b"SECRETcanary7f3e"
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"} if parser == "python" else None
    args = ("run", "-c", str(path), "--port", "0", "--log-level", "debug")
    ready = r"listening on http://127\.0\.0\.1:\d+"
    async with running(*args, ready=ready, env=env) as (process, output):
        port = int(re.search(r"127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
        for template in BAD_REQUESTS:
            answer = await raw_request(port, template % canary)
            assert re.match(rb"HTTP/1\.[01] 4", answer), (template, answer[:40])
            assert canary not in answer
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0
    assert canary.decode() not in output + rest


async def test_sigterm_lets_an_in_flight_request_finish(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    """SIGTERM stops accepting, lets the request under way finish, and exits 0."""

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await asyncio.sleep(1)
        return web.Response(text="finished")

    upstream.respond = slow
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0")
    async with running(*args, ready=r"listening on http://127\.0\.0\.1:\d+") as (process, output):
        port = int(re.search(r"127\.0\.0\.1:(\d+)", output).group(1))  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            in_flight = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/api/slow"))
            async with asyncio.timeout(5):
                while not upstream.requests:  # noqa: ASYNC110 - the fake offers no event
                    await asyncio.sleep(0.02)
            process.send_signal(signal.SIGTERM)  # while the upstream takes its second
            async with asyncio.timeout(10):
                response = await in_flight
                assert (response.status, await response.text()) == (200, "finished")
                response.release()
                code = await process.wait()
    assert code == 0
