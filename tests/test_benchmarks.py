"""The benchmark scripts still run (smoke mode: seconds, no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_proxy_vs_direct_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "proxy_vs_direct.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("direct ") for line in lines)
    assert any(line.startswith("tokenproxy ") for line in lines)
    assert "tokenproxy/direct throughput:" in result.stdout
