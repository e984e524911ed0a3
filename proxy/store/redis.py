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
  a record written meanwhile is newer than Redis's, so the next read takes it and copies it
  over (a write never replaces a newer record: compared in Lua). Nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.secrets.envelope import MasterKeys
from proxy.store.base import Lease
from proxy.store.files import FileStore
from proxy.store.records import TokenRecord

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT = 0.5
_RETRY_FIRST, _RETRY_MAX = 0.5, 10.0
_DOWN = (RedisError, OSError, TimeoutError)

_PUT = """
local newest = tonumber(redis.call('HGET', KEYS[1], 'written') or '-1')
if newest > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'fp', ARGV[2], 'written', ARGV[3])
if tonumber(ARGV[4]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('PERSIST', KEYS[1])
end
return 1
"""
_INVALIDATE = """
if redis.call('HGET', KEYS[1], 'data') == ARGV[1] then
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
        self.keys = keys
        self._local = local
        self._down_until = 0.0
        self._retry_delay = _RETRY_FIRST

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
        self._came_back()
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

    def _came_back(self) -> None:
        if self._retry_delay != _RETRY_FIRST:
            logger.warning("token store: Redis is reachable again")
            self._retry_delay = _RETRY_FIRST

    def health(self) -> str:
        return "ok" if self.up else "degraded"

    # -- the store --------------------------------------------------------------------------

    async def read(self, key: str) -> TokenRecord | None:
        """The newer of Redis's record and this machine's: a rotation written here while
        Redis was away (or before a write to it failed) wins over the older state there, and
        is copied to Redis now; an entry Redis lost or cannot unseal never hides ours."""
        local = await self._local.read(key)
        sealed = await self.call(self.redis.hget(self._name("token", key), "data"), False)
        if sealed is False:
            return local
        shared = TokenRecord.unseal(sealed, key, self.keys) if sealed is not None else None
        if local is not None and (shared is None or local.written_wall > shared.written_wall):
            await self._put(local)
            return local
        return shared

    async def write(self, record: TokenRecord) -> None:
        await self._local.write(record)  # durable here first, whatever Redis does
        await self._put(record)  # if Redis is away, the next read copies it over

    async def _put(self, record: TokenRecord) -> bool:
        """Set the record unless Redis holds a newer one (atomic, in Lua)."""
        ttl_ms = 0  # a record with a refresh token never expires
        if record.refresh_token is None and record.access_token is not None:
            ttl_ms = max(1, int((record.expires_wall() - time.time()) * 1000))
        name = self._name("token", record.key)
        sealed, written = record.seal(self.keys), repr(record.written_wall)
        put = self.redis.eval(_PUT, 1, name, sealed, record.fingerprint or "", written, ttl_ms)
        return await self.call(put, None) is not None

    async def invalidate(self, key: str, fingerprint: str) -> None:
        await self._local.invalidate(key, fingerprint)
        name = self._name("token", key)
        sealed = await self.call(self.redis.hget(name, "data"), None)
        record = TokenRecord.unseal(sealed, key, self.keys) if sealed else None
        if record is None or record.fingerprint != fingerprint:
            return
        emptied = replace(record.without_access_token(), written_wall=time.time())
        # Only if the record is still the very one read: a rotation written meanwhile stays.
        await self.call(
            self.redis.eval(_INVALIDATE, 1, name, sealed, emptied.seal(self.keys)), None
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

    async def claim_once(self, name: str, ttl: float) -> bool:
        if not self.up:
            return await self._local.claim_once(name, ttl)
        key, ms = self._name("once", name), max(1, int(ttl * 1000))
        taken = await self.call(self.redis.set(key, "1", nx=True, px=ms), None)
        if taken is None and not self.up:
            return await self._local.claim_once(name, ttl)
        return bool(taken)

    async def close(self) -> None:
        await self.redis.aclose()
