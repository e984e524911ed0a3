"""``python -m proxy.config FILE``: the validator that serving processes run
(:mod:`proxy.config.handoff`).

Reads the command-line overrides as JSON on stdin, loads FILE as ``check`` does, and writes
to stdout the validated blocks or the problems, for the process that ran it. Exits 0 either
way: a refused config is an answer, not a failure.
"""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from proxy.config.handoff import encode_outcome
from proxy.config.loader import load_settings
from proxy.errors import ConfigError


def main() -> int:
    overrides = orjson.loads(sys.stdin.buffer.read() or b"null")
    try:
        outcome = encode_outcome(load_settings(Path(sys.argv[1]), overrides))
    except ConfigError as exc:
        outcome = encode_outcome(exc)
    sys.stdout.buffer.write(outcome)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
