"""What one access-log line costs, text and JSON, against what a request costs in all.

Times ``AccessLogger.log`` through the real logging set-up (the redacting record factory,
the chosen formatter, a stream handler writing to /dev/null) for a typical proxied GET, and
the metrics update every request makes; prints microseconds per line and the share of a
request at the per-request CPU cost measured by ``suite.py`` (pass it with ``--request-us``).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from proxy.logs import ACCESS_LOGGER, AccessLogger, RequestFacts, configure_logging, facts_key
from proxy.metrics.registry import METRICS


class FakeRequest(dict[Any, Any]):
    remote = "127.0.0.1"
    method = "GET"
    raw_path = "/crm/v2/customers/42?expand=orders"
    version = SimpleNamespace(major=1, minor=1)


def per_call(function: Any, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - started) / rounds * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few thousand lines only")
    parser.add_argument("--request-us", type=float, default=200.0, help="CPU per request")
    args = parser.parse_args()
    rounds = 2_000 if args.smoke else 100_000
    request = FakeRequest()
    facts = request[facts_key] = RequestFacts(time.perf_counter())
    facts.connector, facts.upstream_seconds = "crm", 0.00084
    facts.request_id = "7f3a0c2e9b1d4e5fa6b7c8d9e0f1a2b3"
    response = SimpleNamespace(status=200, body_length=812)
    results = {}
    with open(os.devnull, "w") as sink:
        for fmt in ("text", "json"):
            configure_logging("info", fmt)
            logging.getLogger().handlers[0].setStream(sink)  # type: ignore[attr-defined]
            access = AccessLogger(logging.getLogger(ACCESS_LOGGER), "")
            line = functools.partial(access.log, request, response, 0.0012)
            results[fmt] = per_call(line, rounds)
    results["metrics"] = per_call(lambda: METRICS.request_done("crm", 200, 0.0012), rounds)
    for name, micros in results.items():
        share = micros / args.request_us * 100
        print(f"{name:8} {micros:6.1f} us per request  ({share:4.1f} % of {args.request_us:g} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
