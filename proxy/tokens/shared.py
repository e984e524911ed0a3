"""One connector's token state in the store: what a process may adopt, and fetching under
the fleet-wide lease.

Guarantees, with :class:`~proxy.tokens.manager.TokenManager` calling :meth:`obtain` from
its single flight:

- **One fetch per key in the fleet.** A process fetches only while it holds the key's lease,
  and reads the store again once it has it (another may have just published). The others
  poll the store, bounded by the caller's deadline, and adopt what the holder publishes;
  if the holder dies, its lease goes and one of them takes over.
- **Persist before use.** The new record (access token and refresh token) is written
  durably before the token is handed out; a refresh token rotated by an answer that fails
  otherwise is written too. A refresh token is never sent twice, anywhere.
- **The configured seed loses to the store's refresh token**, unless the seed changed since
  that state grew from it (then the store's state is ignored and overwritten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from proxy.errors import TokenEndpointError
from proxy.store.base import Lease, TokenStore
from proxy.store.records import TokenRecord, fingerprint, seed_hash
from proxy.tokens.model import Clock, IssuedToken, Phase, Token

logger = logging.getLogger(__name__)

MAX_CLOCK_SKEW = 60.0
"""A record stamped further ahead than this by another process's clock is not adopted."""
POLL_INTERVAL = 0.05
"""How often a process waiting for another's fetch looks at the store."""


@dataclass(frozen=True)
class Obtained:
    """A token, where it came from, and when it was issued on this process's clock."""

    issued: IssuedToken
    issued_at: float
    source: str
    refresh_token: str | None


class SharedToken:
    def __init__(
        self, store: TokenStore, key: str, connector: str, seed: str | None, clock: Clock
    ) -> None:
        self.store = store
        self.key = key
        self.connector = connector
        self._seed_hash = seed_hash(seed)
        self._clock = clock
        self.rejected: set[str] = set()
        """Fingerprints of tokens an upstream rejected: never adopted again."""
        self.unsaved: TokenRecord | None = None
        """Newer state the store refused; written before anything else is done."""
        self.account: str | None = None
        """Who authorized the refresh token in use (interactive grants), carried forward."""

    async def read(self) -> TokenRecord | None:
        record = await self.store.read(self.key)
        if record is not None and record.seed_hash != self._seed_hash:
            logger.warning(
                "connector %s: the configured refresh token changed since the stored one was "
                "issued; the configured one is used",
                self.connector,
            )
            return None
        if record is not None:
            self.account = record.account
        return record

    def adoptable(
        self, record: TokenRecord | None, margin: float, holding: bool
    ) -> Obtained | None:
        """``record``'s token placed on our clock, if it is worth taking: fresh, or at least
        not yet stale when this process holds nothing."""
        if record is None or record.access_token is None:
            return None
        if fingerprint(record.access_token) in self.rejected:
            return None
        age = self._clock.wall() - record.issued_wall
        if age < -MAX_CLOCK_SKEW:
            return None  # issued on a clock far ahead of ours: its times mean nothing here
        issued_at = self._clock.monotonic() - max(0.0, age)
        token = Token.issued(record.access_token, issued_at, record.lifetime, margin, "store")
        phase = token.phase(self._clock.monotonic())
        if phase is Phase.FRESH or (phase is Phase.RENEWABLE and not holding):
            issued = IssuedToken(record.access_token, record.lifetime)
            return Obtained(issued, issued_at, "store", record.refresh_token)
        return None

    async def obtain(
        self,
        fetch: Callable[[TokenRecord | None], Awaitable[tuple[IssuedToken, float]]],
        refresh_token: Callable[[], str | None],
        *,
        margin: float,
        holding: bool,
        force: bool = False,
    ) -> Obtained:
        """Adopt a token another process published, or fetch one under the lease.

        ``fetch(record)`` asks the provider, with the record's refresh token when there is a
        record (even none: a seed already used must not be sent again), and returns the
        token and its local issue time; ``refresh_token()`` is the one held
        once it returned or failed (rotated, dropped), which is then persisted. ``force``:
        the token stored now is not taken (an operator's refresh); a newer one still is.
        """
        if self.unsaved is not None:  # never step back to the state before it
            await self._persist(self.unsaved)
        record = await self.read()
        if force and record is not None and record.access_token is not None:
            self.rejected.add(fingerprint(record.access_token))
        adopted = self.adoptable(record, margin, holding)
        if adopted is not None:
            return adopted
        lease = await self._lead(margin, holding)
        if isinstance(lease, Obtained):
            return lease
        try:
            record = await self.read()  # someone may have published while we waited
            adopted = self.adoptable(record, margin, holding)
            if adopted is not None:
                return adopted
            stored = record.refresh_token if record is not None else None
            try:
                issued, issued_at = await fetch(record)
            except BaseException:
                held = refresh_token()
                if held != stored:  # rotated or dropped by a failing answer: keep that
                    base = record or TokenRecord(self.key, self._seed_hash)
                    now = self._clock.wall()
                    await self._persist(replace(base, refresh_token=held, written_wall=now))
                raise
            await self.save(issued, issued_at, refresh_token())
            return Obtained(issued, issued_at, "token endpoint", refresh_token())
        finally:
            await lease.release()

    async def save(self, issued: IssuedToken, issued_at: float, refresh_token: str | None) -> None:
        """Write a token obtained here (``issued_at`` on our monotonic clock), durably."""
        age = self._clock.monotonic() - issued_at
        now = self._clock.wall()
        await self._persist(
            TokenRecord(
                self.key,
                self._seed_hash,
                issued.access_token,
                now - age,
                issued.lifetime,
                refresh_token,
                written_wall=now,
                account=self.account,
            )
        )

    async def install(
        self, issued: IssuedToken, issued_at: float, refresh_token: str | None, wait: float
    ) -> None:
        """Save what an interactive authorization obtained, under the lease, so a renewal
        under way in another process cannot write its older state over it afterwards."""
        async with self._holding_lease(wait):
            self.account = None  # a new authorization: whose it is, userinfo says next
            await self.save(issued, issued_at, refresh_token)

    async def remember_account(self, account: str, wait: float) -> None:
        """Note who authorized the state stored now (after :meth:`install`)."""
        async with self._holding_lease(wait):
            record = await self.read()
            self.account = account
            if record is not None:
                now = self._clock.wall()
                await self._persist(replace(record, account=account, written_wall=now))

    @contextlib.asynccontextmanager
    async def _holding_lease(self, wait: float) -> AsyncIterator[None]:
        """The key's lease, waited for up to ``wait`` seconds (TimeoutError after)."""
        async with asyncio.timeout(wait):
            while (lease := await self.store.try_lease(self.key)) is None:  # noqa: ASYNC110 - another process holds it
                await asyncio.sleep(POLL_INTERVAL)
        try:
            yield
        finally:
            await lease.release()

    async def _persist(self, record: TokenRecord) -> None:
        """Write ``record``, or keep it to write first next time and fail: a token is not
        handed out before its state is durable, and state never steps back."""
        try:
            await self.store.write(record)
        except OSError as exc:
            self.unsaved = record
            logger.error(
                "connector %s: cannot write the token store (%s); the new token is held back "
                "until it can be written",
                self.connector,
                exc.strerror or type(exc).__name__,
            )
            raise TokenEndpointError("the token store cannot be written") from None
        self.unsaved = None

    async def _lead(self, margin: float, holding: bool) -> Lease | Obtained:
        """Wait until this process holds the lease, or another has published a token."""
        while True:
            lease = await self.store.try_lease(self.key)
            if lease is not None:
                return lease
            adopted = self.adoptable(await self.read(), margin, holding)
            if adopted is not None:
                return adopted
            await asyncio.sleep(POLL_INTERVAL)  # real time: it is I/O polling, not token timing

    async def invalidate(self, token: str) -> None:
        self.rejected.add(fingerprint(token))
        await self.store.invalidate(self.key, fingerprint(token))
