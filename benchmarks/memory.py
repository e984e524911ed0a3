"""Where a worker's resident memory goes: which imports, which mapped files, the runtime.

    .venv/bin/python benchmarks/memory.py            # the table below, for the bench config
    .venv/bin/python benchmarks/memory.py --smoke    # the same (it takes seconds); for CI

First a real ``tokenproxy run`` (one process, a static-token connector, access log off)
starts and idles; its RSS, split into anonymous memory (Python objects, C heaps) and
file-backed pages (shared libraries), and the files that hold the most are read from
``/proc``. Then a fresh interpreter imports the modules that worker had loaded, group by
group in dependency order (the standard library with asyncio and ssl, then the third-party
packages, then the proxy's own), and builds the same runtime,
reading its RSS after each step: what each group adds given the ones before it. Like the
worker, it takes its config from the validator process (``proxy.config.handoff``), so
pydantic and YAML are in neither; the last line says so, or names what slipped in.

RSS depends on the machine's libraries and Python build far less than timings do; still,
compare steps of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness import REPO, free_port, tokenproxy

VALIDATOR = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "yaml")
"""What only the validator process loads (:mod:`proxy.config.handoff`)."""
CONNECTOR = (
    '  bench: {route: /bench, upstream: "http://127.0.0.1:9", auth: {type: static, token: t}}\n'
)

# Run in a fresh interpreter: imports ``groups`` one after another, then builds and starts
# the server from the config at argv[2]; prints one JSON line of (step, RSS kB) pairs.
_STEPS = """
import importlib, json, sys
def rss():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS"))
steps = [("python", rss())]
for name, modules in json.loads(sys.argv[1]):
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:
            pass  # a module that only imports under its package's own import order
    steps.append((name, rss()))
import uvloop
from pathlib import Path
from proxy.config.handoff import load_apart
from proxy.http.server import ProxyServer, settle_heap
async def run():
    server = ProxyServer(load_apart(Path(sys.argv[2])).settings)
    await server.start()
    settle_heap()
    steps.append(("the runtime, started", rss()))
    await server.stop()
uvloop.run(run())
print(json.dumps(steps))
"""

_MODULES = """
import json, sys, uvloop
from pathlib import Path
from proxy.config.handoff import load_apart
from proxy.http.server import ProxyServer
async def run():
    server = ProxyServer(load_apart(Path(sys.argv[1])).settings)
    await server.start()
    await server.stop()
uvloop.run(run())
print(json.dumps(sorted(sys.modules)))
"""


def status_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


def mapped_files(pid: int, top: int = 6) -> list[tuple[str, int]]:
    """The files whose mapped pages are resident the most, in kB."""
    sizes: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5:  # a mapping's header line
            name = parts[5] if len(parts) > 5 else "[anonymous]"
        elif parts[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(parts[1])
    return sorted(sizes.items(), key=lambda item: -item[1])[:top]


def groups(modules: list[str]) -> list[tuple[str, list[str]]]:
    """The worker's modules in import groups, dependencies first."""
    stdlib = set(sys.stdlib_module_names)

    def top(module: str) -> str:
        return module.split(".", 1)[0]

    def pick(test: Callable[[str], bool]) -> list[str]:
        return [m for m in modules if test(top(m))]

    return [
        ("+ the standard library (asyncio, ssl...)", pick(lambda t: t in stdlib)),
        ("+ uvloop", pick(lambda t: t == "uvloop")),
        (
            "+ aiohttp, yarl, multidict...",
            pick(lambda t: t not in stdlib and t not in ("proxy", "uvloop")),
        ),
        ("+ the proxy's modules", pick(lambda t: t == "proxy")),
    ]


def python(code: str, *args: str) -> str:
    """What ``code`` prints, run by a fresh interpreter that imports the proxy from here."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    ).stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same: it takes seconds")
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bench.yaml"
        port = free_port()
        config.write_text(
            f"listen: {{host: 127.0.0.1, port: {port}}}\nserver: {{access_log: false}}\n"
            f"connectors:\n{CONNECTOR}"
        )
        with tokenproxy(port, CONNECTOR) as worker:
            fields = status_kb(worker.pid)
            files = mapped_files(worker.pid)
        modules = json.loads(python(_MODULES, str(config)))
        steps = json.loads(python(_STEPS, json.dumps(groups(modules)), str(config)))
    mb = 1024
    print(
        f"A worker idle: RSS {fields['VmRSS'] / mb:.1f} MB "
        f"(anonymous {fields['RssAnon'] / mb:.1f}, file-backed {fields['RssFile'] / mb:.1f})"
    )
    print("\n| mapped | resident MB |\n|---|---|")
    for name, kb in files:
        print(f"| {Path(name).name if name.startswith('/') else name} | {kb / mb:.1f} |")
    print("\n| step (a fresh interpreter) | adds MB | RSS MB |\n|---|---|---|")
    previous = 0
    for name, kb in steps:
        print(f"| {name} | {(kb - previous) / mb:.1f} | {kb / mb:.1f} |")
        previous = kb
    slipped = sorted({m.split(".", 1)[0] for m in modules} & set(VALIDATOR))
    print(
        f"\nThe validator's libraries in the worker: {', '.join(slipped)}"
        if slipped
        else "\nThe validator's libraries in the worker: none (pydantic and YAML stay apart)"
    )
    return 1 if slipped else 0


if __name__ == "__main__":
    raise SystemExit(main())
