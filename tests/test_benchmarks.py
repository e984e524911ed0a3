"""The benchmark scripts still run (smoke mode: seconds, no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("proxy_vs_direct.py", ["direct ", "tokenproxy ", "tokenproxy/direct throughput:"]),
        # Paced load (latency without queueing): the rate it was asked for is what it measured.
        ("proxy_vs_direct.py --rate 40", ["paced built-in at 40 req/s", "added p50 latency:"]),
        # One burst of 50 cold requests: 0 failed, exactly 1 token request; then a renewal.
        ("token_engine.py", ["       50", "       0               1", "renewal under load"]),
        # Faults at random for seconds: the growth line is printed (figures in benchmarks/README).
        (
            "soak.py",
            ["statuses: 200:", "growth after warm-up: RSS", "after stop: fds +0, tasks left 0"],
        ),
        # The access line (text and JSON) and the metrics update, per request.
        ("log_line.py", ["text, lane", "json, logging", "metrics "]),
        # Without nginx or wrk it falls back to an aiohttp upstream and a built-in generator.
        ("suite.py", ["| small | 8 | direct |", "| small | 8 | tokenproxy x2 |"]),
        # One worker on a core of its own, next to the minimal proxy, with CPU per request.
        ("pinned.py", ["| small | 8 | minimal aiohttp |", "| small | 8 | tokenproxy |"]),
        # The proxy's own work per request, sockets stubbed, layer by layer.
        ("hot_path.py", ["| server |", "| + gateway |", "| + forwarding |"]),
        # A worker's RSS, and what each group of imports adds to a fresh interpreter.
        ("memory.py", ["A worker idle: RSS", "The validator's libraries in the worker: none"]),
    ],
)
def test_benchmark_smoke(script: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script.split()[0]), *script.split()[1:], "--smoke"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
