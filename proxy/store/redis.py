"""The redis backend: token state shared by every replica, in front of the local store.

- Records live in one hash per key, ``<prefix>token:<key>``: the sealed record and the
  fingerprint of its access token, so compare-and-invalidate runs in Redis without the
  token. A record without a refresh token expires with its access token.
- The lease is ``<prefix>lease:<key>``, set only if absent, with a value unique to its
  holder, renewed every third of its time while the holder fetches, and deleted only by that
  holder (compare-and-delete). A holder that dies lets it lapse; another replica takes over.
- Every write goes to the local store (``state_dir``) first, then Redis. While Redis cannot
  be reached (short socket timeouts, no client retries), the local store answers, with its
  own lease for a local single flight; one warning per outage; Redis is tried again after a
  back-off (0.5 s, doubling to 10 s, jittered, so a fleet does not reconnect at once);
  records written meanwhile are copied to Redis once it is back. Nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from proxy.secrets.envelope import MasterKeys
from proxy.store.base import Lease
from proxy.store.files import FileStore
from proxy.store.records import TokenRecord

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT = 0.5
_RETRY_FIRST, _RETRY_MAX = 0.5, 10.0
_DOWN = (RedisError, OSError, TimeoutError)

_INVALIDATE = """
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'data', ARGV[2], 'fp', '')
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLease:
    def __init__(self, store: RedisStore, name: str, holder: str) -> None:
        self._store, self._name, self._holder = store, name, holder
        self._ms = store.lease_ms
        self._renewal = asyncio.get_running_loop().create_task(self._renew())

    async def _renew(self) -> None:
        # A slow provider must never let the lease lapse while its holder still fetches.
        while True:
            await asyncio.sleep(self._ms / 3000)
            try:
                await self._store.redis.eval(_RENEW, 1, self._name, self._holder, self._ms)
            except _DOWN:
                pass  # the outage is noticed by the store's next call

    async def release(self) -> None:
        self._renewal.cancel()
        await asyncio.gather(self._renewal, return_exceptions=True)
        await self._store.call(self._store.redis.eval(_RELEASE, 1, self._name, self._holder), None)


class RedisStore:
    backend = "redis"

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        keys: MasterKeys,
        local: FileStore,
        lease_seconds: float = 10.0,
    ) -> None:
        self.redis = redis
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._prefix = prefix
        self._keys = keys
        self._local = local
        self._down_until = 0.0
        self._retry_delay = _RETRY_FIRST
        self._pending: set[str] = set()  # keys written locally while Redis was down
        self._flushing = False

    @classmethod
    def connect(
        cls,
        url: str,
        prefix: str,
        keys: MasterKeys,
        local: FileStore,
        lease_seconds: float,
        **tls: Any,
    ) -> RedisStore:
        client = Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),  # a failure answers at once; the store backs off
            **tls,
        )
        return cls(client, prefix, keys, local, lease_seconds)

    def _name(self, kind: str, key: str) -> str:
        return f"{self._prefix}{kind}:{key}"

    # -- availability -----------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return asyncio.get_running_loop().time() >= self._down_until

    async def call(self, operation: Any, fallback: Any) -> Any:
        """Await a Redis command; on failure note the outage and return ``fallback``."""
        if not self.up:
            operation.close()
            return fallback
        try:
            result = await operation
        except _DOWN as exc:
            self._went_down(exc)
            return fallback
        await self._came_back()
        return result

    def _went_down(self, exc: BaseException) -> None:
        loop = asyncio.get_running_loop()
        if self._retry_delay == _RETRY_FIRST:
            logger.warning(
                "token store: Redis is unreachable (%s); serving from the local store and "
                "retrying with back-off",
                type(exc).__name__,
            )
        self._down_until = loop.time() + self._retry_delay * random.uniform(0.8, 1.2)
        self._retry_delay = min(_RETRY_MAX, self._retry_delay * 2)

    async def _came_back(self) -> None:
        if self._retry_delay != _RETRY_FIRST:
            logger.warning("token store: Redis is reachable again")
            self._retry_delay = _RETRY_FIRST
        if self._flushing:
            return  # the copy below makes calls of its own
        self._flushing = True
        try:
            await self._flush_pending()
        finally:
            self._flushing = False

    async def _flush_pending(self) -> None:
        while self._pending:
            key = self._pending.pop()
            record = await self._local.read(key)
            if record is None:
                continue
            sealed = await self.call(self.redis.hget(self._name("token", key), "data"), False)
            if sealed is False:
                self._pending.add(key)
                return
            shared = TokenRecord.unseal(sealed, key, self._keys) if sealed else None
            if shared is not None and shared.written_wall >= record.written_wall:
                continue  # another replica wrote newer state meanwhile: never regress it
            if not await self._put(record):
                self._pending.add(key)
                return

    def health(self) -> str:
        return "ok" if self.up else "degraded"

    # -- the store --------------------------------------------------------------------------

    async def read(self, key: str) -> TokenRecord | None:
        sealed = await self.call(self.redis.hget(self._name("token", key), "data"), False)
        if sealed is False:
            return await self._local.read(key)
        if sealed is None:
            # Redis lost it (restarted empty, evicted): what this machine kept still counts.
            return await self._local.read(key)
        return TokenRecord.unseal(sealed, key, self._keys)

    async def write(self, record: TokenRecord) -> None:
        await self._local.write(record)  # durable here first, whatever Redis does
        if not await self._put(record):
            self._pending.add(record.key)

    async def _put(self, record: TokenRecord) -> bool:
        name = self._name("token", record.key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(name, mapping={"data": record.seal(self._keys), "fp": record.fingerprint or ""})
        if record.refresh_token is None and record.access_token is not None:
            remaining = record.expires_wall() - time.time()
            pipe.pexpire(name, max(1, int(remaining * 1000)))
        else:
            pipe.persist(name)
        return await self.call(pipe.execute(), None) is not None

    async def invalidate(self, key: str, fingerprint: str) -> None:
        await self._local.invalidate(key, fingerprint)
        record = await self.read(key)
        if record is None:
            return
        emptied = record.without_access_token().seal(self._keys)
        await self.call(
            self.redis.eval(_INVALIDATE, 1, self._name("token", key), fingerprint, emptied), None
        )

    async def try_lease(self, key: str) -> Lease | None:
        if not self.up:
            return await self._local.try_lease(key)  # a single flight on this machine at least
        holder = secrets.token_hex(16)
        name = self._name("lease", key)
        taken = await self.call(self.redis.set(name, holder, nx=True, px=self.lease_ms), False)
        if taken is False and not self.up:
            return await self._local.try_lease(key)
        return RedisLease(self, name, holder) if taken else None

    async def close(self) -> None:
        await self.redis.aclose()
