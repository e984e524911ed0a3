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


async def test_every_module_imports_on_its_own() -> None:
    """Import each module first, in a fresh interpreter: a cycle shows only that way."""
    limit = asyncio.Semaphore(4)

    async def imports(module: str) -> tuple[str, int, bytes]:
        async with limit:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", f"import {module}", stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(process.communicate(), 60)
            return module, process.returncode or 0, err

    results = await asyncio.gather(*(imports(m) for m in MODULES))
    assert [(m, err.decode()[-300:]) for m, code, err in results if code] == []


def test_the_serving_path_loads_no_cryptography_until_needed() -> None:
    """8 MB of a worker's memory: only TLS identities, assertions and enc: values need it."""
    import subprocess

    code = (
        "import sys, proxy.cli, proxy.http.server, proxy.config.loader;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'cryptography', 'jwt'}))"
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
