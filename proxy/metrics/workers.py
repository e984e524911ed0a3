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
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from proxy.metrics.exposition import StateOf
from proxy.metrics.registry import METRICS

INTERVAL = 1.0


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
        """Write this worker's snapshot every second until cancelled, and once more then."""
        try:
            while True:
                self.write(*state())
                await asyncio.sleep(INTERVAL)
        finally:
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
            except (OSError, orjson.JSONDecodeError):
                continue  # being replaced right now, or gone: the next scrape has it
            alive = _alive(int(path.stem)) if path.stem.isdigit() else False
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
