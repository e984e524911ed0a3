"""The token store's interface: every connector, both backends.

A store keeps one :class:`~proxy.store.records.TokenRecord` per token key and a lease per key
for the one fetch at a time across processes. It never judges tokens: the token manager
(:mod:`proxy.tokens.shared`) decides what to adopt and when to fetch.
"""

from __future__ import annotations

from typing import Protocol

from proxy.secrets.envelope import MasterKeys
from proxy.store.records import TokenRecord


class Lease(Protocol):
    """The right to fetch a key's token, held by one process in the fleet at a time."""

    async def release(self) -> None:
        """Give the lease up; only its holder's lease is ever removed."""


class TokenStore(Protocol):
    backend: str
    """``memory`` (this machine, durable in ``state_dir``) or ``redis`` (the fleet)."""
    keys: MasterKeys
    """Seal records and name them (:func:`~proxy.store.records.token_key`)."""

    async def read(self, key: str) -> TokenRecord | None:
        """The record, or None for a missing or unusable one. Never raises for the backend
        being down: a store that cannot reach its backend answers from its local copy."""

    async def write(self, record: TokenRecord) -> None:
        """Durably: once this returns, a crash or restart finds ``record``."""

    async def invalidate(self, key: str, fingerprint: str) -> None:
        """Drop the access token of ``key`` only if it is still the one ``fingerprint``
        names (a 401 seen by several processes renews it once)."""

    async def try_lease(self, key: str) -> Lease | None:
        """The lease, or None if another process holds it."""

    async def claim_once(self, name: str, ttl: float) -> bool:
        """True for the first claim of ``name`` in ``ttl`` seconds, wherever the store
        reaches (an authorization's ``state`` is spent once in the fleet)."""

    def health(self) -> str:
        """``ok``, or ``degraded`` while a shared backend is unreachable."""

    async def close(self) -> None: ...
