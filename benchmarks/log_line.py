"""What one access-log line costs, text and JSON, against what a request costs in all.

Times ``AccessLogger.log`` for a typical proxied GET through the real set-up (the handler
``configure_logging`` installs, writing to /dev/null) both ways a line can go: the lane
(:mod:`proxy.log_output`: formatted and scrubbed without a log record, written once per
loop iteration; measured at one line per iteration, its dearest case) and the ``logging``
machinery (the redacting record factory, the formatter, a write per line), which lines take
when someone adds a handler or a filter. Then the metrics update every request makes.
Prints microseconds per line and the share of a request at the per-request CPU cost
measured by ``suite.py`` (pass it with ``--request-us``).
"""

from __future__ import annotations

import argparse
import asyncio
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


def per_iteration(function: Any, rounds: int) -> float:
    """``function`` once per event-loop iteration, less what an empty iteration costs."""

    async def lines(work: Any) -> float:
        started = time.perf_counter()
        for _ in range(rounds):
            work()
            await asyncio.sleep(0)
        return (time.perf_counter() - started) / rounds * 1e6

    return asyncio.run(lines(function)) - asyncio.run(lines(lambda: None))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a few thousand lines only")
    parser.add_argument("--request-us", type=float, default=75.0, help="CPU per request")
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
            logger = logging.getLogger(ACCESS_LOGGER)
            line = functools.partial(AccessLogger(logger, "").log, request, response, 0.0012)
            results[f"{fmt}, lane"] = per_iteration(line, rounds)
            logger.addFilter(logging.Filter())  # a filter that passes all: no lane
            results[f"{fmt}, logging"] = per_call(line, rounds)
            logger.filters.clear()
    results["metrics"] = per_call(lambda: METRICS.request_done("crm", 200, 0.0012), rounds)
    for name, micros in results.items():
        share = micros / args.request_us * 100
        print(f"{name:14} {micros:5.1f} us per request  ({share:4.1f} % of {args.request_us:g} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
