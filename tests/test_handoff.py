"""A serving process takes its config from the validator process (proxy.config.handoff):
the same config as an in-process load, every problem relayed, secrets masked and never on
disk or in an argument, and neither pydantic nor YAML ever loaded where requests are served."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest
import uvloop

from proxy.config import handoff
from proxy.config.handoff import decode_outcome, load_apart, load_apart_async
from proxy.config.loader import load_settings
from proxy.errors import ConfigError
from tests.conftest import WriteConfig, connector, eventually, http_status
from tests.fakes import RecordingUpstream
from tests.test_cli import _stop, running

CANARY = "sec_CANARY_handoff_4242"
VALIDATOR_LIBRARIES = ("_pydantic_core", "_yaml")
"""What the validator loads, as the shared objects a process maps (/proc/PID/maps)."""


def _validator_mapped(pid: int) -> list[str]:
    mapped = Path(f"/proc/{pid}/maps").read_text()
    return [library for library in VALIDATOR_LIBRARIES if library in mapped]


async def _line_with(process: asyncio.subprocess.Process, text: str) -> str:
    """The next line of the process's output that holds ``text``."""
    assert process.stdout is not None
    async with asyncio.timeout(10):
        while True:
            line = (await process.stdout.readline()).decode()
            assert line, f"the output ended before {text!r}"
            if text in line:
                return line


def test_overrides_reach_the_validator(write_config: WriteConfig) -> None:
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    loaded = load_apart(path, {"listen": {"port": 9321}})
    assert loaded.settings.listen.port == 9321


async def test_every_problem_is_relayed_without_a_secret(write_config: WriteConfig) -> None:
    bad = {
        "listen": {"port": CANARY},
        "connectors": {
            "a": {"route": "nope", "upstream": "https://a.example", "auth": {"type": "x"}},
            "b": {"upstream": f"https://u:{CANARY}@b.example", "auth": {"type": "none"}},
        },
    }
    path = write_config(bad)
    with pytest.raises(ConfigError) as here:
        load_settings(path)
    with pytest.raises(ConfigError) as apart:
        load_apart(path)
    with pytest.raises(ConfigError) as apart_while_serving:
        await load_apart_async(path)
    assert apart.value.problems == apart_while_serving.value.problems == here.value.problems
    assert len(here.value.problems) == 4 and CANARY not in str(apart.value)


def test_the_handed_secrets_are_masked_in_logs(
    write_config: WriteConfig, caplog: pytest.LogCaptureFixture
) -> None:
    secret = f"{CANARY}-static"
    auth = {"type": "static", "token": secret}
    load_apart(write_config({"connectors": {"a": connector("https://a.example", auth=auth)}}))
    with caplog.at_level(logging.INFO):
        logging.getLogger("proxy.test").info("sent %s", secret)
    assert secret not in caplog.text and "sent ***" in caplog.text


def _call(module: str, name: str, argument: str) -> bytes:
    """A pickle (protocol 4) that looks up ``module``/``name`` and calls it with ``argument``."""

    def text(value: str) -> bytes:
        encoded = value.encode()
        return b"\x8c" + bytes([len(encoded)]) + encoded

    return b"\x80\x04" + text(module) + text(name) + b"\x93" + text(argument) + b"\x85R."


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("posix", "system"),
        ("builtins", "print"),
        ("logging", "Logger"),  # a class, of another module
        ("proxy.config.handoff", "os.system"),  # a dotted name walks attributes to os.system
        ("proxy.config.sources", "resolve_tree"),  # a function of a config module, no block
        ("proxy.config.never_imported", "Block"),  # unpickling imports nothing
    ],
)
def test_nothing_but_config_blocks_is_unpickled(module: str, name: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match=f"the validator sent a {re.escape(module)}"):
        decode_outcome(_call(module, name, f"touch {marker}"))
    assert not marker.exists()


def test_dates_that_yaml_reads_are_handed_over(write_config: WriteConfig) -> None:
    body = {"since": datetime.date(2024, 1, 1), "at": datetime.datetime(2024, 1, 1, 12)}
    request = {"url": "https://idp.example/token", "body": body, "body_format": "json"}
    auth = {"type": "custom", "token_request": request, "client_id": "c"}
    path = write_config({"connectors": {"a": connector("https://a.example", auth=auth)}})
    assert load_apart(path) == load_settings(path)


def test_the_validator_never_runs_what_lies_where_it_starts(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``proxy/config/__main__.py`` (or a ``yaml.py``) in the directory ``run`` starts in
    would otherwise be the validator, with every secret of the environment."""
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    planted = tmp_path / "planted"
    marker = tmp_path / "ran"
    for module in ("proxy/__init__.py", "proxy/config/__init__.py", "proxy/config/__main__.py"):
        (planted / module).parent.mkdir(parents=True, exist_ok=True)
        (planted / module).write_text(f"open({str(marker)!r}, 'w').close()\n")
    (planted / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted)
    assert load_apart(path).settings.connectors.keys() == {"a"}
    assert not marker.exists()


@pytest.mark.parametrize("serving", [False, True], ids=["at start", "at a reload"])
async def test_a_validator_that_hangs_is_a_refused_config(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch, serving: bool
) -> None:
    monkeypatch.setattr(handoff, "VALIDATOR", ("-c", "import time; time.sleep(30)"))
    monkeypatch.setattr(handoff, "VALIDATOR_TIMEOUT", 0.5)
    path = write_config({"connectors": {"a": connector("https://a.example")}})
    with pytest.raises(ConfigError, match=r"did not answer within 0\.5s"):
        if serving:
            await load_apart_async(path)
        else:
            await asyncio.to_thread(load_apart, path)


def test_a_validator_that_fails_is_a_config_error(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handoff, "VALIDATOR", ("-c", "raise SystemExit(3)"))
    with pytest.raises(ConfigError, match=r"the config validator failed \(exit status 3\)"):
        load_apart(write_config({"connectors": {"a": connector("https://a.example")}}))


def test_an_unreadable_answer_is_refused_without_quoting_it() -> None:
    with pytest.raises(ConfigError) as refused:
        decode_outcome(CANARY.encode())
    assert refused.value.problems == ["the validator's answer is unreadable (UnpicklingError)"]


def _running_with(marker: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():  # bytes: not every one is UTF-8
                return True
        except OSError:
            pass  # gone meanwhile
    return False


def test_a_cancelled_reload_leaves_no_validator_behind(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the server's loop (uvloop), which, unlike asyncio's, kills no child it forgets."""
    marker = f"{os.getpid()}_{id(monkeypatch)}"
    monkeypatch.setattr(handoff, "VALIDATOR", ("-c", f"import time; time.sleep(30)  # {marker}"))
    path = write_config({"connectors": {"a": connector("https://a.example")}})

    async def cancel_a_reload() -> None:
        reload = asyncio.ensure_future(load_apart_async(path))
        await eventually(lambda: asyncio.to_thread(_running_with, marker), within=5)
        reload.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reload

    uvloop.run(cancel_a_reload())
    assert not _running_with(marker)


async def test_a_served_process_never_loads_the_validator_and_reloads_through_it(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    """``run``: no pydantic or YAML where requests are served; a reload goes through the
    validator, a refused one relays its problems (no secret) and the old config stays."""
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0")
    async with running(*args, ready=r"listening on http") as (process, output):
        port = re.search(r"127\.0\.0\.1:(\d+)", output).group(1)  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        assert await asyncio.to_thread(_validator_mapped, process.pid) == []
        broken = {"type": "static", "token": f"{CANARY}\n"}
        write_config({"connectors": {"api": connector(upstream.url, auth=broken)}})
        process.send_signal(signal.SIGHUP)
        refused = await _line_with(process, "reload refused")
        assert "connectors.api.auth.token: may hold only printable ASCII" in refused
        async with aiohttp.ClientSession() as session:
            assert await http_status(session, base, "/api/x") == 200  # the old config
            write_config({"connectors": {"api": connector(upstream.url, route="/new")}})
            process.send_signal(signal.SIGHUP)
            await _line_with(process, "reloaded: 1 connector(s)")
            assert await http_status(session, base, "/new/x") == 200
        assert await asyncio.to_thread(_validator_mapped, process.pid) == []
        code, rest = await _stop(process, signal.SIGTERM)
    assert code == 0 and CANARY not in output + refused + rest


async def test_no_worker_of_workers_loads_the_validator(
    write_config: WriteConfig, upstream: RecordingUpstream
) -> None:
    path = write_config({"connectors": {"api": connector(upstream.url)}})
    args = ("run", "-c", str(path), "--port", "0", "--workers", "2")
    async with running(*args, ready=r"(listening on .*\n.*){2}") as (process, output):
        pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
        assert len(pids) == 2
        for pid in (process.pid, *pids):
            assert await asyncio.to_thread(_validator_mapped, pid) == []
        code, _ = await _stop(process, signal.SIGTERM)
    assert code == 0
