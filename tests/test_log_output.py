"""The access log's lane (proxy.log_output): the very line the logging machinery would write,
in both formats, scrubbed the same way; written once per loop iteration, in order with other
records, and never left behind by a flush."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from proxy import logs
from proxy.log_output import LineHandler, access_lane
from proxy.logs import ACCESS_LOGGER, AccessLogger, RequestFacts, facts_key
from proxy.secrets.redaction import REDACTOR
from tests.conftest import WriteConfig, connector
from tests.fakes import RecordingUpstream
from tests.test_cli import _stop, running

CANARY = "sec_CANARY_lane_3141"


class _Request(dict[Any, Any]):
    remote = "127.0.0.1"
    method = "GET"
    version = SimpleNamespace(major=1, minor=1)

    def __init__(self, raw_path: str, facts: RequestFacts | None) -> None:
        super().__init__()
        self.raw_path = raw_path
        if facts is not None:
            self[facts_key] = facts


def _facts(**fields: Any) -> RequestFacts:
    facts = RequestFacts(0.0)
    facts.request_id, facts.connector = "7f3a0c2e9b1d4e5f", "crm"
    for name, value in fields.items():
        setattr(facts, name, value)
    return facts


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root handler configure_logging installs, writing to a string."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sink = io.StringIO()
    root.handlers[:] = [LineHandler(sink, "text")]
    root.setLevel(logging.INFO)
    try:
        yield sink
    finally:
        root.handlers[:], root.level = handlers, level


def _use(fmt: str, sink: io.StringIO) -> LineHandler:
    handler = LineHandler(sink, fmt)
    logging.getLogger().handlers[:] = [handler]
    return handler


class _PassAll(logging.Filter):
    """A filter that changes nothing but takes the lane away (lines go through logging)."""


_REQUESTS = [
    ("/crm/v2/customers/42?expand=orders", _facts(upstream_seconds=0.00084)),
    (f"/crm/{CANARY}/x", _facts(client="billing", retries=2, aborted=True)),
    (f"http://alice:{CANARY}@api.test/x#frag", None),  # refused by the parser: no facts
]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(("path", "facts"), _REQUESTS, ids=["proxied", "retried", "refused"])
def test_the_lane_writes_what_logging_would(
    stream: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    path: str,
    facts: RequestFacts | None,
) -> None:
    REDACTOR.add([CANARY])
    monkeypatch.setattr(logs, "_perf_counter", lambda: 0.0458)  # both lines: 45.8 ms
    _use(fmt, stream)
    access = AccessLogger(logging.getLogger(ACCESS_LOGGER), "")
    request = _Request(path, facts)
    assert access_lane(access.logger) is not None
    access.record(request, 200, 812, 0.0012)  # type: ignore[arg-type]  # (no loop: at once)
    access.logger.addFilter(_PassAll())
    try:
        assert access_lane(access.logger) is None
        access.record(request, 200, 812, 0.0012)  # type: ignore[arg-type]
    finally:
        access.logger.filters.clear()
    lane, logged = stream.getvalue().splitlines()
    assert CANARY not in lane and "alice" not in lane
    if fmt == "json":  # the same object, but for the millisecond it was written in
        first, second = json.loads(lane), json.loads(logged)
        assert first.pop("ts")[:19] == second.pop("ts")[:19]
        assert first == second
    else:
        stamp = r"^[\d-]+ [\d:]+,\d{3} "
        assert re.sub(stamp, "", lane) == re.sub(stamp, "", logged)
        assert re.match(stamp + r"INFO tokenproxy\.access: 127\.0\.0\.1 \"GET ", lane)


async def test_lines_wait_for_the_loop_iteration_and_keep_their_order(stream: io.StringIO) -> None:
    handler, loop = _use("text", stream), asyncio.get_running_loop()
    for number in range(3):
        handler.add_line(f"access {number}", loop)
    assert stream.getvalue() == ""  # one write for the three, at the end of the iteration
    await asyncio.sleep(0)
    assert stream.getvalue() == "access 0\naccess 1\naccess 2\n"
    handler.add_line("access 3", loop)
    logging.getLogger("proxy.test").warning("a record meanwhile")  # writes the pending first
    after = stream.getvalue().splitlines()[3:]
    assert after[0] == "access 3" and after[1].endswith("WARNING proxy.test: a record meanwhile")
    handler.add_line("access 4", loop)
    handler.flush()  # at exit, or when a worker ends: nothing is left behind
    assert stream.getvalue().endswith("access 4\n")
    await asyncio.sleep(0)
    assert stream.getvalue().count("access 4") == 1


class _LoopThatStopped:
    """A loop that took a write, then stopped before the iteration that would do it."""

    def is_running(self) -> bool:
        return True

    def call_soon(self, callback: Any) -> None:
        pass  # never called back


async def test_lines_a_stopped_loop_left_go_out_with_the_next_loops(stream: io.StringIO) -> None:
    handler = _use("text", stream)
    handler.add_line("first", _LoopThatStopped())  # type: ignore[arg-type]
    handler.add_line("second", asyncio.get_running_loop())
    await asyncio.sleep(0)
    assert stream.getvalue() == "first\nsecond\n"


@pytest.mark.parametrize(
    "change",
    ["a handler on the access logger", "another root handler", "level WARNING", "no propagation"],
)
def test_the_lane_steps_aside_for_any_other_set_up(stream: io.StringIO, change: str) -> None:
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = logger.handlers[:], logger.level, logger.propagate
    root = logging.getLogger()
    try:
        if change == "a handler on the access logger":
            logger.addHandler(logging.NullHandler())
        elif change == "another root handler":
            root.addHandler(logging.NullHandler())
        elif change == "level WARNING":
            logger.setLevel(logging.WARNING)
        else:
            logger.propagate = False
        assert access_lane(logger) is None
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[2]
        logger.setLevel(saved[1])


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_burst_then_sigterm_logs_every_request_once(
    write_config: WriteConfig, upstream: RecordingUpstream, fmt: str, workers: str
) -> None:
    """Through real sockets: many answers within few loop iterations (lines written
    together), then a stop; a worker of --workers ends through flush_and_exit."""
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", workers, "--log-format", fmt)
    ready = r"listening on .*" if workers == "1" else r"(listening on .*\n.*){2}"
    async with running(*args, ready=ready) as (process, output):
        port = re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        connector_ = aiohttp.TCPConnector(limit=20)
        async with aiohttp.ClientSession(connector=connector_) as session:

            async def one(number: int) -> None:
                async with session.get(f"http://127.0.0.1:{port}/api/{number}") as response:
                    assert response.status == 200

            await asyncio.gather(*(one(number) for number in range(60)))
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0
    for number in range(60):
        if fmt == "json":
            lines = [line for line in (output + rest).splitlines() if f'"/api/{number}"' in line]
        else:
            lines = [line for line in (output + rest).splitlines() if f"GET /api/{number} " in line]
        assert len(lines) == 1, (number, lines)
