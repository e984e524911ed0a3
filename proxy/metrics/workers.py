"""One scrape for every worker of ``--workers N``: each worker writes a snapshot of its
counters and connector state to ``<dir>/<pid>.json`` every second (atomically), and the
worker that answers a scrape adds the others' to its own live numbers.

Counters of a worker that exited are still added (a counter must never go down); its
gauges (in-flight requests, token state) are not. The parent makes the directory and
removes it when it exits. Snapshots are at most a second old, well within any scrape
interval; this costs the hot path nothing, where a shared-memory counter per event would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.metrics.registry import METRICS
from proxy.metrics.state import StateOf

INTERVAL = 1.0
STALE_AFTER = 5 * INTERVAL
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    counters: dict[str, Any]
    state: StateOf | None
    """None for a worker that is gone."""
    store_up: bool | None


class WorkerSnapshots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._own = directory / f"{os.getpid()}.json"

    async def keep_writing(self, state: Callable[[], tuple[StateOf, bool | None]]) -> None:
        """Write this worker's snapshot every second until cancelled, and once more then.
        A failed write (a full disk) is logged once and tried again a second later."""
        failing = False
        try:
            while True:
                try:
                    self.write(*state())
                    failing = False
                except OSError as exc:
                    if not failing:
                        logger.warning(
                            "metrics: cannot write this worker's snapshot (%s); other "
                            "workers' scrapes miss its recent counts until it can",
                            exc.strerror or type(exc).__name__,
                        )
                    failing = True
                await asyncio.sleep(INTERVAL)
        finally:
            with contextlib.suppress(OSError):
                self.write(*state())

    def write(self, state: StateOf, store_up: bool | None) -> None:
        data = {"counters": METRICS.dump(), "state": state, "store_up": store_up}
        draft = self._own.with_suffix(".tmp")
        draft.write_bytes(orjson.dumps(data))
        draft.replace(self._own)

    def others(self) -> Iterator[Snapshot]:
        for path in self.directory.glob("*.json"):
            if path == self._own:
                continue
            try:
                data = orjson.loads(path.read_bytes())
                fresh = time.time() - path.stat().st_mtime < STALE_AFTER
            except (OSError, orjson.JSONDecodeError):
                continue  # being replaced right now, or gone: the next scrape has it
            # Gauges only from a live worker whose snapshot is recent: a frozen one would
            # show a token expiring that was renewed since.
            alive = fresh and path.stem.isdigit() and _alive(int(path.stem))
            yield Snapshot(
                data["counters"],
                data["state"] if alive else None,
                data["store_up"] if alive else None,
            )


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 0)
        return True
    return False
