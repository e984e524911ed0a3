"""Pick the connector for a request: by host first, then by the longest route prefix.

The table is built once at load. A prefix matches only on a segment boundary: ``/crm``
matches ``/crm`` and ``/crm/x``, never ``/crmx``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    """The chosen target and the part of the raw path that follows its route prefix.

    For host matches ``rest`` is the whole path, mapped onto the upstream base.
    """

    target: T
    rest: str


class RouteTable(Generic[T]):
    def __init__(
        self, routes: Iterable[tuple[str, T]], hosts: Iterable[tuple[str, T]] = ()
    ) -> None:
        # Longest first, so the first match is the most specific (oauth2-proxy's sortByPathLongest).
        self._prefixes = sorted(routes, key=lambda item: len(item[0]), reverse=True)
        self._hosts = {host.lower(): target for host, target in hosts}

    def match_host(self, host: str | None, path: str) -> Match[T] | None:
        """Match ``host`` (``name`` or ``name:port``) against the configured hosts."""
        if not host or not self._hosts:
            return None
        host = host.lower()
        target = self._hosts.get(host)
        if target is None and not host.endswith("]"):
            target = self._hosts.get(host.rsplit(":", 1)[0])
        return Match(target, path) if target is not None else None

    def match_path(self, path: str) -> Match[T] | None:
        for prefix, target in self._prefixes:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                if not rest or rest[0] == "/":
                    return Match(target, rest)
        return None
