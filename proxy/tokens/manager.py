"""One connector's token: obtained once however many requests wait, renewed before it expires.

Guarantees (HARDENING.md §5.B, §5.D):

- **Single flight.** At most one token request per connector is under way. Everyone who needs
  a token meanwhile awaits that one task (shielded: a client that disconnects never cancels
  it), and a failure reaches every waiter as the same error from that one call.
- **No waiting with steady traffic.** A request after ``renew_at`` starts a background renewal
  and still gets the current token; only from ``stale_at`` on do requests wait (see
  :mod:`proxy.tokens.model`).
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
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from proxy.auth.base import Credential, credential_for
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.egress import Egress
from proxy.errors import ProxyError, TokenEndpointError, TokenUnavailableError
from proxy.redaction import REDACTOR
from proxy.tokens.endpoint import TokenRequest, send_token_request
from proxy.tokens.grant import Grant, RequestContext
from proxy.tokens.model import Clock, IssuedToken, SystemClock, Token
from proxy.tokens.policy import RetryPolicy, TokenStats

logger = logging.getLogger(__name__)


class TokenManager:
    """Caches and renews one connector's token; the connector's :class:`Authenticator`."""

    def __init__(
        self,
        connector: str,
        config: TokenLifecycleConfig,
        grant: Grant,
        egress: Egress,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.connector = connector
        self.config = config
        self.reauth_on = frozenset(config.reauth_on)
        self.replay_limit = config.reauth_max_body
        self._grant = grant
        self._egress = egress
        self._clock = clock or SystemClock()
        self._policy = policy or RetryPolicy()
        self._token: Token | None = None
        self._credential: Credential | None = None
        self._refresh_token = grant.seed_refresh_token()
        self._last_access_token: str | None = None  # kept after an invalidation, for templates
        self._needs_refresh_token = False
        self._inflight: asyncio.Task[Token | TokenEndpointError] | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_fetch_start = -math.inf
        self._last_forced = -math.inf
        self.stats = TokenStats()

    # -- the Authenticator protocol ------------------------------------------------------

    async def credential(self) -> Credential:
        now = self._clock.monotonic()
        token, credential = self._token, self._credential
        if token is not None and credential is not None:
            if now < token.renew_at:
                return credential  # the hot path: nothing awaited
            backing_off = now < self._retry_at
            if now < token.stale_at or (backing_off and now < token.expires_at):
                if not backing_off:
                    self._start_fetch()
                return credential
        if now < self._retry_at:
            raise self._unavailable(now)
        outcome = await asyncio.shield(self._start_fetch())
        if isinstance(outcome, Token):
            return credential_for(outcome.value, self.config)
        # The renewal failed: a token that has not expired yet is still good to use.
        token, credential = self._token, self._credential
        if token is not None and credential is not None:
            if self._clock.monotonic() < token.expires_at:
                return credential
        raise _copy(outcome)

    async def renew(self, rejected: Credential) -> Credential | None:
        """The upstream rejected ``rejected``: a credential to replay with, or None."""
        if self._credential is not None and self._credential.value == rejected.value:
            now = self._clock.monotonic()
            if now - self._last_forced < self.config.reauth_interval:
                return None  # forced refreshes are rate-limited: a 401 loop cannot hammer
            self._last_forced = now
            self._token = self._credential = None
            logger.info("connector %s: upstream rejected the token; renewing it", self.connector)
        try:
            return await self.credential()
        except ProxyError:
            return None

    # -- operations ----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch a new token now (admin, warm-up); the current one stays in use meanwhile."""
        outcome = await asyncio.shield(self._start_fetch())
        if isinstance(outcome, TokenEndpointError):
            raise _copy(outcome)

    def describe(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        token = self._token
        if self._needs_refresh_token:
            state = "needs_refresh_token"
        elif now < self._retry_at or (token is None and self.stats.last_error):
            state = "failing"
        elif token is None or now >= token.expires_at:
            state = "none"
        elif now < token.renew_at:
            state = "valid"
        else:
            state = "expiring"
        alive = token is not None and now < token.expires_at
        return {
            "state": state,
            "expires_in": math.floor(token.expires_at - now) if token and alive else None,
            "last_error": self.stats.last_error,
            "fetches": self.stats.fetches,
            "failures": self.stats.failures,
        }

    @property
    def has_valid_token(self) -> bool:
        token = self._token
        return token is not None and self._clock.monotonic() < token.expires_at

    async def close(self) -> None:
        task = self._inflight
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._egress.close()

    # -- the single flight ---------------------------------------------------------------

    def _start_fetch(self) -> asyncio.Task[Token | TokenEndpointError]:
        if self._inflight is None:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            self._inflight.add_done_callback(self._fetch_done)
        return self._inflight

    def _fetch_done(self, task: asyncio.Task[Token | TokenEndpointError]) -> None:
        self._inflight = None

    async def _fetch(self) -> Token | TokenEndpointError:
        """Never raises: the outcome, success or failure, is shared by every waiter."""
        wait = self._last_fetch_start + self._policy.min_fetch_interval - self._clock.monotonic()
        if wait > 0:
            await self._clock.sleep(wait)
        started = self._last_fetch_start = self._clock.monotonic()
        self.stats.fetches += 1
        try:
            issued = await self._obtain()
        except TokenEndpointError as exc:
            exc.connector = self.connector
            self._record_failure(exc)
            return exc
        except Exception as exc:  # a bug must not leave waiters hanging
            logger.error(
                "connector %s: error obtaining a token: %s", self.connector, type(exc).__name__
            )
            error = TokenEndpointError("internal error obtaining a token", connector=self.connector)
            self._record_failure(error)
            return error
        return self._publish(issued, started)

    def _context(self) -> RequestContext:
        return RequestContext(self._last_access_token, self._refresh_token, self._clock.wall())

    async def _obtain(self) -> IssuedToken:
        grant = self._grant
        if grant.refresh_request(self._context()) is not None:
            try:
                return await self._attempt(lambda: grant.refresh_request(self._context()), True)
            except TokenEndpointError as exc:
                if not grant.refresh_rejected(exc):
                    raise
                self._refresh_token = None
                logger.warning(
                    "connector %s: renewal failed (%s); the refresh token was dropped",
                    self.connector,
                    exc.oauth_error or exc.message,
                )
        if not grant.has_primary_grant:
            self._needs_refresh_token = True
            raise TokenEndpointError(
                "no valid refresh token: this connector needs a new refresh token",
                oauth_error="invalid_grant",
            )
        return await self._attempt(lambda: grant.primary_request(self._context()), False)

    async def _attempt(
        self, build: Callable[[], TokenRequest | None], refreshing: bool
    ) -> IssuedToken:
        """Send the request ``build`` makes (anew for each try: assertions are single-use)."""
        policy = self._policy
        for attempt in range(1, policy.attempts + 1):
            request = build()
            assert request is not None
            try:
                response = await send_token_request(self._egress, request)
                return self._grant.read(
                    response, refreshing=refreshing, now_wall=self._clock.wall()
                )
            except TokenEndpointError as exc:
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
        raise AssertionError("unreachable")

    def _publish(self, issued: IssuedToken, started: float) -> Token:
        if issued.refresh_token is not None:
            # Rotation: the new refresh token replaces the old before the access token is out.
            self._refresh_token = issued.refresh_token
        REDACTOR.hold(self.connector, [t for t in (issued.access_token, self._refresh_token) if t])
        self._needs_refresh_token = False
        margin = min(self.config.refresh_margin, issued.lifetime / 2)
        # Lifetimes count from when the request was sent: never later than the provider's.
        token = Token(issued.access_token, started, issued.lifetime, margin, "token endpoint")
        self._token = token
        self._last_access_token = token.value
        self._credential = credential_for(token.value, self.config)
        if self._failures:
            logger.info("connector %s: token endpoint recovered", self.connector)
        self._failures = 0
        self._retry_at = 0.0
        self.stats.last_error = None
        return token

    def _record_failure(self, exc: TokenEndpointError) -> None:
        self._failures += 1
        self.stats.failures += 1
        self.stats.last_error = exc.oauth_error or exc.code
        policy = self._policy
        delay = min(policy.backoff_max, policy.backoff_base * 2 ** (self._failures - 1))
        delay *= random.uniform(1.0, 1.2)
        if exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, policy.backoff_max))
        self._retry_at = self._clock.monotonic() + delay
        log = logger.warning if self._failures == 1 else logger.debug
        log(
            "connector %s: cannot obtain a token: %s; next try in %.1fs",
            self.connector,
            exc.message,
            delay,
        )

    def _unavailable(self, now: float) -> TokenUnavailableError:
        retry_after = max(1, math.ceil(self._retry_at - now))
        return TokenUnavailableError(
            f"the token endpoint is failing (last error: {self.stats.last_error}); "
            f"next try in {retry_after}s",
            retry_after=retry_after,
            connector=self.connector,
        )


def _copy(error: TokenEndpointError) -> TokenEndpointError:
    """A fresh exception per waiter: re-raising one object from many tasks grows its traceback."""
    copy = type(error)(
        error.message,
        connector=error.connector,
        retryable=error.retryable,
        retry_after=error.retry_after,
        oauth_error=error.oauth_error,
    )
    return copy
