"""The package as installed: complete, and free of import cycles."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"
MODULES = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    for path in PACKAGE.rglob("*.py")
    if path.name != "__main__.py"  # runs the command line when imported, by design
)


def test_every_package_directory_has_an_init() -> None:
    # Without one, a regular (non-editable) install silently leaves the directory out.
    folders = {path.parent for path in PACKAGE.rglob("*.py")}
    assert [f for f in folders if not (f / "__init__.py").exists()] == []


# Each module is imported first in a process forked from one that has loaded only the
# third-party libraries: a cycle among our modules shows just as in a fresh interpreter,
# without paying aiohttp's and pydantic's import once per module (it took 30 s).
_IMPORT_EACH = """
import importlib, os, sys, traceback
for library in ("aiohttp.web", "pydantic", "yaml", "orjson", "uvloop",
                "prometheus_client", "redis.asyncio", "cryptography.x509", "jwt", "multidict"):
    try:
        importlib.import_module(library)
    except ImportError:
        pass
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            print(module, traceback.format_exc()[-300:], file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status:
        print(module)
"""


async def test_every_module_imports_on_its_own() -> None:
    """Import each module first, in an interpreter of its own: a cycle shows only that way."""

    async def imports(modules: list[str]) -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _IMPORT_EACH,
            *modules,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()[-500:]
        return out.decode(), err.decode()

    halves = [MODULES[0::2], MODULES[1::2]]  # two cores
    results = await asyncio.gather(*(imports(half) for half in halves))
    failed = [line for out, _ in results for line in out.split()]
    assert failed == [], "\n".join(err for _, err in results)


def test_the_serving_path_loads_no_cryptography_until_needed() -> None:
    """8 MB of a worker's memory: only TLS identities, assertions and enc: values need it
    (and prometheus-client only a scrape)."""
    import subprocess

    code = (
        "import sys, proxy.cli, proxy.http.server, proxy.config.loader;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'cryptography', 'jwt', 'prometheus_client'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_the_config_package_loads_no_runtime_module() -> None:
    """Configuration is data: validating a config opens, builds and imports nothing of the
    runtime (no aiohttp, no TLS, no token engine); :mod:`proxy.runtime` builds from it."""
    import subprocess

    config_modules = [m for m in MODULES if m.startswith("proxy.config")]
    code = (
        f"import sys; import {', '.join(config_modules)};"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'cryptography',"
        " 'jwt') or (m.startswith('proxy.') and m != 'proxy.errors'"
        " and not m.startswith(('proxy.config', 'proxy.secrets')))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
