"""One connector's token: obtained once however many requests wait, renewed before it expires.

Guarantees (docs/design.md, "Token timing"):

- **Single flight.** At most one token request per connector is under way. Everyone who needs
  a token meanwhile awaits that one task (shielded: a client that disconnects never cancels
  it), and a failure reaches every waiter as the same error from that one call.
- **One token request per usable lifetime, and no waiting with steady traffic.** A request
  in the token's ``RENEWABLE`` phase starts a background renewal and still gets the current
  token; only a ``STALE`` token makes requests wait (see :mod:`proxy.tokens.model`).
- **Fail soft, then closed.** While renewal fails, a token that has not expired keeps being
  used. Without one, requests get the failure; during back-off (exponential, jittered,
  honouring ``Retry-After``) they get 503 ``token_unavailable`` at once, so a failing
  provider is never hammered. Token requests start at most once per ``min_fetch_interval``.
- **Refresh tokens** are used first when held; a rotated one replaces the old before the new
  access token is published; ``invalid_grant`` drops it, then the primary grant is tried, or
  the connector reports that it needs a new refresh token.
- **Compare-and-invalidate.** :meth:`renew` drops the token only if it is still the one the
  upstream rejected, at most once per ``reauth_interval``, so a burst of 401s causes one
  refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from proxy.auth.base import Authenticator, Credential, credential_for
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.errors import (
    AuthorizationNeededError,
    ProxyError,
    TokenEndpointError,
    TokenEndpointTimeoutError,
    TokenUnavailableError,
)
from proxy.metrics.registry import METRICS
from proxy.secrets.redaction import REDACTOR
from proxy.store.records import TokenRecord, seed_hash, token_material
from proxy.tokens.endpoint import TokenRequest, TokenSender, provider_now
from proxy.tokens.grant import Grant, RequestContext
from proxy.tokens.model import Authorized, Clock, IssuedToken, Phase, SystemClock, Token
from proxy.tokens.policy import RetryPolicy, TokenStats
from proxy.tokens.shared import Obtained, SharedToken

if TYPE_CHECKING:
    from proxy.tokens.oauth2 import OAuth2Grant

logger = logging.getLogger(__name__)

InteractiveFlow = Callable[["OAuth2Grant", TokenSender, Clock], Awaitable[Authorized]]
"""One person's authorization, run against the connector's grant, sender and clock."""


class TokenManager(Authenticator):
    """Caches and renews one connector's token; the connector's :class:`Authenticator`.

    ``send`` carries token requests to the provider (:data:`TokenSender`); the manager owns
    no connection, so unit tests drive it with a fake sender and a fake clock.
    """

    def __init__(
        self,
        connector: str,
        config: TokenLifecycleConfig,
        grant: Grant,
        send: TokenSender,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        deadline: float | None = None,
        shared: SharedToken | None = None,
    ) -> None:
        """``deadline``: seconds one acquisition may take in all (the connector's
        ``connect + read``); None: no overall bound. ``shared``: the token's state in the
        store, shared with other processes and kept across restarts; None: this process
        only."""
        self.connector = connector
        self.config = config
        self.reauth_on = frozenset(config.reauth_on)
        self.replay_limit = config.reauth_max_body
        self._grant = grant
        self._send = send
        self._clock = clock or SystemClock()
        self._policy = policy or RetryPolicy()
        self._deadline = deadline
        self._held: _Held | None = None
        self._refresh_token = grant.seed_refresh_token()
        self._last_access_token: str | None = None  # kept after an invalidation, for templates
        self._needs_refresh_token = False
        self._inflight: asyncio.Task[Token | TokenEndpointError] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_fetch_start = -math.inf
        self._last_forced = -math.inf
        self._shared = shared
        self._account: str | None = None  # without a store; else the store's record says
        self.stats = TokenStats()
        self._hit, self._miss = (connector, "hit"), (connector, "miss")  # metric keys, made once
        self._success, self._failure = (connector, "success"), (connector, "failure")
        self._sent = 0  # token requests sent, in all

    # -- the Authenticator protocol ------------------------------------------------------

    async def credential(self) -> Credential:
        now = self._clock.monotonic()
        held = self._held
        phase = held.token.phase(now) if held is not None else Phase.EXPIRED
        if phase is Phase.FRESH and held is not None:
            METRICS.cache[self._hit] += 1
            return held.credential  # the hot path: nothing awaited
        METRICS.cache[self._miss] += 1
        backing_off = now < self._retry_at
        if held is not None and (
            phase is Phase.RENEWABLE or (phase is Phase.STALE and backing_off)
        ):
            if not backing_off:
                self._start_fetch()
            return held.credential
        if backing_off:
            raise self._unavailable(now)
        outcome = await asyncio.shield(self._start_fetch())
        if isinstance(outcome, Token):
            return credential_for(outcome.value, self.config)
        # The renewal failed: a token that has not expired yet is still good to use.
        held = self._held
        if held is not None and held.token.phase(self._clock.monotonic()) is not Phase.EXPIRED:
            return held.credential
        raise _copy(outcome)

    async def renew(self, rejected: Credential) -> Credential | None:
        """The upstream rejected ``rejected``: a credential to replay with, or None."""
        held = self._held
        if held is not None and held.credential.value == rejected.value:
            now = self._clock.monotonic()
            if now - self._last_forced < self.config.reauth_interval:
                return None  # forced refreshes are rate-limited: a 401 loop cannot hammer
            self._last_forced = now
            self._held = None
            self._event(logging.INFO, "token_rejected", "upstream rejected the token; renewing it")
            if self._shared is not None:  # the fleet renews it once, not once per process
                await self._shared.invalidate(held.token.value)
        try:
            return await self.credential()
        except ProxyError:
            return None

    async def access_token(self) -> str:
        """The raw token :meth:`credential` hands out now (obtained first if need be), for
        a connector that exchanges it (RFC 8693 chaining); raises like :meth:`credential`.
        It goes through :meth:`credential`, so a chain of exchanges checks every link."""
        credential = await self.credential()
        if credential.query_param is not None or not self.config.token_prefix:
            return credential.value
        return credential.value.removeprefix(f"{self.config.token_prefix} ")

    def phase(self) -> Phase:
        held = self._held
        return Phase.EXPIRED if held is None else held.token.phase(self._clock.monotonic())

    # -- operations ----------------------------------------------------------------------

    async def refresh(self, *, force: bool = True) -> None:
        """Get a new token now (admin, ``token --fresh``); the current one stays in use
        meanwhile. ``force=False`` (warm-up) takes a valid one from the store instead."""
        outcome = await asyncio.shield(self._start_fetch(force=force))
        if isinstance(outcome, TokenEndpointError):
            raise _copy(outcome)

    @property
    def grant(self) -> Grant:
        return self._grant

    @property
    def clock(self) -> Clock:
        return self._clock

    async def prepare(self) -> Grant:
        """The grant, its provider discovered (for the consent endpoints); raises
        TokenEndpointError."""
        await self._grant.prepare(self._send)
        return self._grant

    async def authorize(self, flow: InteractiveFlow) -> Authorized:
        """Run one interactive authorization (a device code, a browser's code), install
        what it yields, then ask the provider who authorized; raises TokenEndpointError."""
        from proxy.tokens.oauth2 import OAuth2Grant
        from proxy.tokens.userinfo import who_authorized

        grant = self._grant
        if not (isinstance(grant, OAuth2Grant) and self.config.interactive):
            raise TokenEndpointError("this connector has no interactive grant to run")
        authorized = await flow(grant, self._send, self._clock)
        await self.install(authorized)  # durable before the new access token is used at all
        account = await who_authorized(grant, self._send, authorized.bearer)
        if account is not None:
            self._account = account
            if self._shared is not None:
                await self._shared.remember_account(account, self._deadline or 30.0)
        self._event(logging.INFO, "authorized", "authorized%s", _as(account))
        return replace(authorized, account=account)

    async def install(self, authorized: Authorized) -> None:
        """Take what an interactive authorization obtained: persisted first (with the
        store), then used. It replaces the earlier authorization whole: without a refresh
        token of its own, none is kept (an older one may be another account's)."""
        self._refresh_token = None
        self._keep_refresh_token(authorized.refresh_token)
        self._account = None
        self._failures = 0  # not a recovery of the provider: a person authorized
        issued, at = authorized.issued, authorized.issued_at
        if self._shared is not None:
            try:
                await self._shared.install(issued, at, self._refresh_token, self._deadline or 30.0)
            except TimeoutError:
                raise TokenEndpointError(
                    "the token store stayed busy (another process renews this connector)"
                ) from None
        self._publish(Obtained(issued, at, "token endpoint", self._refresh_token))

    def inherit(self, old: TokenManager) -> bool:
        """After a reload: take over ``old``'s token, refresh token and back-off if both
        define the same token (:func:`~proxy.store.records.token_material`); the credential
        is made again, since how it is injected may have changed. False: nothing taken."""
        if token_material(self.connector, self.config) != token_material(old.connector, old.config):
            return False
        if seed_hash(self._grant.seed_refresh_token()) != seed_hash(
            old._grant.seed_refresh_token()
        ):
            return False  # a new seed refresh token was configured: it starts a new chain
        held = old._held
        if held is not None:
            self._held = _Held(held.token, credential_for(held.token.value, self.config))
        self._refresh_token, self._last_access_token = old._refresh_token, old._last_access_token
        self._needs_refresh_token, self._account = old._needs_refresh_token, old._account
        self._failures, self._retry_at = old._failures, old._retry_at
        self._last_fetch_start, self._last_forced = old._last_fetch_start, old._last_forced
        self.stats = old.stats
        if self._shared is not None and old._shared is not None:
            self._shared.rejected = old._shared.rejected
            self._shared.account = old._shared.account
            self._shared.unsaved = old._shared.unsaved  # written first, before any fetch
        return True

    def how_to_authorize(self) -> str:
        """What a person does to authorize this connector (named in errors and status)."""
        command = f"run `tokenproxy authorize {self.connector}`"
        links = getattr(self.grant, "links", None)
        if links is None:
            return command
        return f"open {links.start_url} in a browser, or {command}"

    def describe(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        held = self._held
        phase = self.phase()
        if self._needs_refresh_token:
            state = "needs_authorization" if self.config.interactive else "needs_refresh_token"
        elif now < self._retry_at or (held is None and self.stats.last_error):
            state = "failing"
        else:
            state = _STATE_OF_PHASE[phase]
        alive = held is not None and phase is not Phase.EXPIRED
        obtained = self.stats.last_obtained
        interactive: dict[str, Any] = {}
        if self.config.interactive:
            links = getattr(self.grant, "links", None)
            account = self._shared.account if self._shared is not None else self._account
            interactive = {
                "account": account if state != "needs_authorization" else None,
                **({"start_url": links.start_url} if links is not None else {}),
            }
        return {
            "state": state,
            "expires_in": math.floor(held.token.expires_at - now) if held and alive else None,
            "source": held.token.source if held and alive else None,
            **interactive,
            "store": self._shared.store.health() if self._shared is not None else None,
            "last_error": self.stats.last_error,
            "fetches": self.stats.fetches,
            "failures": self.stats.failures,
            "obtained_ago": None if obtained is None else math.floor(now - obtained),
            "retry_in": math.ceil(self._retry_at - now) if now < self._retry_at else None,
        }

    async def close(self, grace: float = 5.0) -> None:
        """Let a token request under way finish (up to ``grace`` seconds) before cancelling
        it: cancelled after it was sent, a refresh-token grant the provider carried out
        would lose the rotated refresh token."""
        task = self._inflight
        if task is None or task.done():
            return
        if self._refresh_token is None:  # nothing that a cancelled answer could lose
            grace = 0.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(grace, self._deadline or grace)):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- the single flight ---------------------------------------------------------------

    def _start_fetch(self, *, force: bool = False) -> asyncio.Task[Token | TokenEndpointError]:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch(force))
            self._inflight.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[Token | TokenEndpointError]) -> None:
        self._inflight = None

    async def _fetch(self, force: bool) -> Token | TokenEndpointError:
        """Never raises: the outcome, success or failure, is shared by every waiter."""
        wait = self._last_fetch_start + self._policy.min_fetch_interval - self._clock.monotonic()
        if wait > 0:
            await self._clock.sleep(wait)
        self._last_fetch_start = self._clock.monotonic()
        try:
            # One deadline for the whole acquisition, retries included: a client waits at
            # most the connector's timeouts, however the provider drips its answers.
            async with asyncio.timeout(self._deadline):
                obtained = await self._acquire(force)
        except TokenEndpointError as exc:
            self._record_failure(exc)
            return exc
        except TimeoutError:
            timeout = TokenEndpointTimeoutError(
                "timed out waiting for the token endpoint", proxy_status="http_response_timeout"
            )
            self._record_failure(timeout)
            return timeout
        except Exception as exc:  # a bug must not leave waiters hanging
            logger.error(
                "connector %s: error obtaining a token: %s", self.connector, type(exc).__name__
            )
            error = TokenEndpointError("internal error obtaining a token")
            self._record_failure(error)
            return error
        return self._publish(obtained)

    async def _acquire(self, force: bool) -> Obtained:
        """From the provider, or, with a store, from the fleet (:mod:`proxy.tokens.shared`)."""
        if self._shared is None:
            issued, issued_at = await self._request(None)
            return Obtained(issued, issued_at, "token endpoint", self._refresh_token)
        obtained = await self._shared.obtain(
            self._request,
            lambda: self._refresh_token,
            margin=self.config.refresh_margin,
            holding=self._held is not None,
            force=force,
        )
        METRICS.store[self._hit if obtained.source == "store" else self._miss] += 1
        return obtained

    async def _request(self, stored: TokenRecord | None) -> tuple[IssuedToken, float]:
        """One token request (with retries); the token and its issue time on our clock.
        ``stored``: the store's record, whose refresh token (or lack of one) wins over ours:
        it is the fleet's newest, and a seed it grew from was used already."""
        if stored is not None:
            if stored.refresh_token is not None:
                self._keep_refresh_token(stored.refresh_token)
            else:
                self._refresh_token = None
        # Lifetimes count from the start of the second in which the request was sent:
        # providers count whole seconds (oidc-provider's iat is floor(now)), so up to a
        # second of expires_in can be gone already. Never later than the provider's clock.
        issued_at = self._clock.monotonic() - self._clock.wall() % 1
        self.stats.fetches += 1
        started, sent = time.perf_counter(), self._sent
        try:
            return await self._obtain(), issued_at
        finally:
            if self._sent > sent:  # not when nothing could be asked (no refresh token)
                METRICS.token_seconds[self.connector].observe(time.perf_counter() - started)

    def _context(self) -> RequestContext:
        return RequestContext(self._last_access_token, self._refresh_token, self._clock.wall())

    async def _obtain(self) -> IssuedToken:
        grant = self._grant
        await grant.prepare(self._send)
        renewal = grant.refresh_request(self._context())
        if renewal is not None:
            try:
                return await self._attempt(
                    renewal, lambda: grant.refresh_request(self._context()), refreshing=True
                )
            except TokenEndpointError as exc:
                if not grant.refresh_rejected(exc):
                    raise
                self._refresh_token = None
                self._event(
                    logging.WARNING,
                    "refresh_token_rejected",
                    "renewal failed (%s); the refresh token was dropped",
                    exc.oauth_error or exc.message,
                    error=exc.oauth_error,
                )
        if not grant.has_primary_grant:
            self._needs_refresh_token = True
            if self.config.interactive:
                raise AuthorizationNeededError(
                    f"this connector is not authorized: {self.how_to_authorize()}",
                    oauth_error="invalid_grant",
                )
            raise TokenEndpointError(
                "no valid refresh token: this connector needs a new refresh token",
                oauth_error="invalid_grant",
            )

        def primary() -> TokenRequest:
            return grant.primary_request(self._context())

        return await self._attempt(primary(), primary, refreshing=False)

    async def _attempt(
        self,
        first: TokenRequest,
        rebuild: Callable[[], TokenRequest | None],
        *,
        refreshing: bool,
    ) -> IssuedToken:
        """Send ``first``, then what ``rebuild`` makes for each retry: client assertions are
        single-use, so every try carries a new one, and no request is built twice."""
        policy = self._policy
        request: TokenRequest | None = first
        for attempt in range(1, policy.attempts + 1):
            assert request is not None
            self._sent += 1
            try:
                response = await self._send(request)
                self._keep_refresh_token(
                    self._grant.refresh_token_in(response, refreshing=refreshing)
                )
                provider_wall = provider_now(response, self._clock.wall())
                issued = self._grant.read(response, refreshing=refreshing, now_wall=provider_wall)
                METRICS.token_requests[self._success] += 1
                return issued
            except TokenEndpointError as exc:
                METRICS.token_requests[self._failure] += 1
                if not exc.retryable or attempt == policy.attempts:
                    raise
                delay = exc.retry_after
                if delay is None:
                    delay = policy.attempt_delay * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                if delay > policy.max_attempt_delay:
                    raise  # a long Retry-After: honour it in the back-off, not here
                logger.debug(
                    "connector %s: token request attempt %d failed (%s); retrying in %.2fs",
                    self.connector,
                    attempt,
                    exc.message,
                    delay,
                )
                await self._clock.sleep(delay)
                request = rebuild()
        raise AssertionError("unreachable")

    def _keep_refresh_token(self, rotated: str | None) -> None:
        """Rotation: a new refresh token replaces the old at once, before the rest of the
        answer is judged and before the new access token is out (the old one is revoked)."""
        if rotated is not None and rotated != self._refresh_token:
            self._refresh_token = rotated
            REDACTOR.hold(self.connector, [rotated])

    def _publish(self, obtained: Obtained) -> Token:
        issued = obtained.issued
        if obtained.refresh_token is not None:
            self._keep_refresh_token(obtained.refresh_token)
        REDACTOR.hold(self.connector, [t for t in (issued.access_token, self._refresh_token) if t])
        self._needs_refresh_token = False
        token = Token.issued(
            issued.access_token,
            obtained.issued_at,
            issued.lifetime,
            self.config.refresh_margin,
            obtained.source,
        )
        renewed = self._held is not None
        self._held = _Held(token, credential_for(token.value, self.config))
        self.stats.last_obtained = self._clock.monotonic()
        self._last_access_token = token.value
        if obtained.source == "store":
            self._event(logging.DEBUG, "token_adopted", "took the token in the token store")
        else:
            self._event(
                logging.INFO,
                "token_renewed" if renewed else "token_fetched",
                "%s a token valid for %ds",
                "renewed" if renewed else "obtained",
                issued.lifetime,
            )
        if self._failures:
            self._event(logging.INFO, "token_recovered", "token endpoint recovered")
        self._failures = 0
        self._retry_at = 0.0
        self.stats.last_error = None
        return token

    def _event(
        self, level: int, event: str, message: str, *args: Any, error: str | None = None
    ) -> None:
        """A token lifecycle event: ``connector NAME: message``, with the connector, the
        event's name and the RFC 6749 error code as fields (JSON logs)."""
        logger.log(
            level,
            "connector %s: " + message,
            self.connector,
            *args,
            extra={"connector": self.connector, "event": event, "error": error},
        )

    def _record_failure(self, exc: TokenEndpointError) -> None:
        self._failures += 1
        self.stats.failures += 1
        self.stats.last_error = exc.oauth_error or exc.code
        policy = self._policy
        delay = min(policy.backoff_max, policy.backoff_base * 2 ** (self._failures - 1))
        delay *= random.uniform(1.0, 1.2)
        if self._needs_refresh_token and self._shared is not None:
            # No provider was asked: look at the store again soon, where `tokenproxy
            # authorize` (or another process) puts the new refresh token.
            delay = policy.min_fetch_interval
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.backoff_max))
        self._retry_at = self._clock.monotonic() + delay
        event = "needs_authorization" if isinstance(exc, AuthorizationNeededError) else ""
        self._event(
            logging.WARNING if self._failures == 1 else logging.DEBUG,
            event or "token_failed",
            "cannot obtain a token: %s; backing off, next try in %.1fs",
            exc.message,
            delay,
            error=exc.oauth_error or exc.code,
        )

    def _unavailable(self, now: float) -> TokenUnavailableError:
        retry_after = max(1, math.ceil(self._retry_at - now))
        if self._needs_refresh_token and self.config.interactive:
            reason = f"this connector is not authorized: {self.how_to_authorize()}"
        else:
            reason = f"the token endpoint is failing (last error: {self.stats.last_error})"
        return TokenUnavailableError(
            f"{reason}; next try in {retry_after}s", retry_after=retry_after
        )


@dataclass(frozen=True, slots=True)
class _Held:
    """The token in use and the credential made from it once (the hot path only reads)."""

    token: Token
    credential: Credential


_STATE_OF_PHASE = {
    Phase.FRESH: "valid",
    Phase.RENEWABLE: "expiring",
    Phase.STALE: "expiring",
    Phase.EXPIRED: "none",
}


def _as(account: str | None) -> str:
    return "" if account is None else f" as {account}"


def _copy(error: TokenEndpointError) -> TokenEndpointError:
    """A fresh exception per waiter: re-raising one object from many tasks grows its traceback."""
    copy = type(error)(
        error.message,
        connector=error.connector,
        retryable=error.retryable,
        retry_after=error.retry_after,
        oauth_error=error.oauth_error,
        proxy_status=error.proxy_status,
    )
    return copy
