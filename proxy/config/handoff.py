"""A config validated in a process of its own and handed to the serving process as blocks.

The blocks (:mod:`proxy.config.models`) are plain dataclasses; only validating them needs
pydantic and YAML, about 14 MB of a worker's memory that a server would otherwise keep
for its whole life. So ``tokenproxy run`` and every worker of ``--workers`` load their
config, at start and at each reload, by running ``python -m proxy.config`` (the
validator, :mod:`proxy.config.__main__`), which reads the file as :func:`load_settings
<proxy.config.loader.load_settings>` does, in the same environment and directory, and
writes the validated blocks, or the problems, to a pipe. Secrets cross that pipe and
nothing else: never a file, never an argument.

What arrives is unpickled by :class:`_BlocksOnly`, which makes nothing but config blocks
and the few standard types they hold. This module imports no pydantic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.config.base import Secret
from proxy.config.models import Settings
from proxy.errors import ConfigError
from proxy.secrets.redaction import REDACTOR, secret_values

VALIDATOR = ("-P", "-m", "proxy.config")
"""How the validator is run by this Python (see :mod:`proxy.config.__main__`). ``-P``: the
directory it starts in is not searched for modules (a ``proxy/`` or ``yaml.py`` there would
otherwise run with the config's secrets)."""
VALIDATOR_TIMEOUT = 30.0
"""Seconds the validator may take (it takes ~0.4): a ``file:`` source that never ends (a FIFO
without a writer) is a refused config, not a reload that holds up a shutdown."""


@dataclass(frozen=True)
class LoadedConfig:
    settings: Settings
    warnings: list[str]


def encode_outcome(outcome: LoadedConfig | ConfigError) -> bytes:
    """The validator's answer: the loaded config, or the problems of a refused one."""
    kept = outcome if isinstance(outcome, LoadedConfig) else outcome.problems
    return pickle.dumps(kept, protocol=pickle.HIGHEST_PROTOCOL)


class _Foreign(pickle.UnpicklingError):
    """The answer names something other than a config block."""


class _BlocksOnly(pickle.Unpickler):
    """Unpickles config blocks and the standard types they hold, nothing else: a class (never
    a function, nor an attribute path: ``name`` has no dot) of a config module this process
    has already imported (so unpickling imports nothing), that is a block (a dataclass) or
    a :class:`~proxy.config.base.Secret`; or one of the standard types YAML and validation
    make."""

    _STANDARD = frozenset(
        {("ipaddress", "IPv4Network"), ("ipaddress", "IPv6Network")}
        | {("datetime", kind) for kind in ("date", "datetime", "time", "timedelta", "timezone")}
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._STANDARD:
            return super().find_class(module, name)
        if module.startswith("proxy.config.") and module in sys.modules and "." not in name:
            found = getattr(sys.modules[module], name, None)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or found is Secret):
                return found
        raise _Foreign(f"the validator sent a {module}.{name}")


def decode_outcome(data: bytes) -> LoadedConfig:
    """The validator's answer as a loaded config; raises ``ConfigError`` for a refused one.

    From here on no log line can show the config's secrets (as after an in-process load).
    """
    try:
        outcome = _BlocksOnly(io.BytesIO(data)).load()
    except _Foreign as exc:
        raise ConfigError([str(exc)]) from None
    except Exception as exc:  # its message may quote the bytes, which hold secrets
        raise ConfigError(
            [f"the validator's answer is unreadable ({type(exc).__name__})"]
        ) from None
    if isinstance(outcome, list):
        raise ConfigError(outcome)
    if not isinstance(outcome, LoadedConfig):
        raise ConfigError([f"the validator sent a {type(outcome).__name__}"])
    REDACTOR.add(secret_values(outcome.settings))
    return outcome


def _command(path: Path) -> tuple[list[str], dict[str, str]]:
    """The validator's command line (the file's path, nothing secret) and environment."""
    package_root = str(Path(__file__).resolve().parents[2])  # finds `proxy` as we did
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return [sys.executable, *VALIDATOR, str(path)], {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
    }


def _too_slow() -> ConfigError:
    return ConfigError([f"the config validator did not answer within {VALIDATOR_TIMEOUT:g}s"])


def _answer(code: int | None, data: bytes) -> LoadedConfig:
    if code != 0 or not data:
        # It said why on our stderr, which it shares (a traceback: a bug of ours).
        raise ConfigError([f"the config validator failed (exit status {code})"])
    return decode_outcome(data)


def load_apart(path: Path, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """The config at ``path`` as :func:`~proxy.config.loader.load_settings` loads it,
    validated by another process; raises ``ConfigError`` listing every problem."""
    argv, env = _command(path)
    try:
        done = subprocess.run(
            argv,
            input=orjson.dumps(overrides),
            stdout=subprocess.PIPE,
            env=env,
            timeout=VALIDATOR_TIMEOUT,
        )
    except subprocess.TimeoutExpired:  # (run kills it)
        raise _too_slow() from None
    return _answer(done.returncode, done.stdout)


async def load_apart_async(path: Path, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """:func:`load_apart` without blocking the event loop (a reload while serving)."""
    argv, env = _command(path)
    child = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )
    try:
        async with asyncio.timeout(VALIDATOR_TIMEOUT):
            data, _ = await child.communicate(orjson.dumps(overrides))
    except TimeoutError:
        raise _too_slow() from None
    finally:
        if child.returncode is None:  # cancelled (the server stops): no validator outlives it
            child.kill()
            await child.wait()
    return _answer(child.returncode, data)
