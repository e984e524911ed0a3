"""The device authorization grant (RFC 8628), run once by ``tokenproxy authorize``.

The provider gives a user code and a verification URL; a person opens it on any device and
approves. Meanwhile we poll the token endpoint at the provider's interval: ``authorization_
pending`` means wait, ``slow_down`` adds 5 seconds to the interval for good (§3.5),
``expired_token`` and ``access_denied`` end it. What it yields, an access token and a refresh
token, goes into the token store before anything uses it (:meth:`TokenManager.install`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenSender, json_payload
from proxy.tokens.grant import RequestContext
from proxy.tokens.model import Authorized, Clock
from proxy.tokens.oauth2 import OAuth2Grant

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0  # RFC 8628 §3.2, when the provider names none
SLOW_DOWN_STEP = 5.0


@dataclass(frozen=True)
class DeviceCode:
    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float

    @classmethod
    def read(cls, payload: dict[str, Any]) -> DeviceCode:
        def text(name: str, *aliases: str) -> str:
            for key in (name, *aliases):
                value = payload.get(key)
                if isinstance(value, str) and value:
                    return value
            raise TokenEndpointError(f"the device authorization answer has no {name}")

        def number(name: str, default: float) -> float:
            value = payload.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise TokenEndpointError(f"the device authorization answer's {name} is invalid")
            return float(value)

        complete = payload.get("verification_uri_complete")
        return cls(
            device_code=text("device_code"),
            user_code=text("user_code"),
            # Google's devices endpoint says verification_url.
            verification_uri=text("verification_uri", "verification_url"),
            verification_uri_complete=complete if isinstance(complete, str) else None,
            expires_in=number("expires_in", 600),
            interval=number("interval", DEFAULT_INTERVAL),
        )


async def authorize_device(
    grant: OAuth2Grant, send: TokenSender, clock: Clock, say: Callable[[str], None]
) -> Authorized:
    """Run the flow; ``say`` shows the person what to do and what we wait for."""
    await grant.prepare(send)
    context = RequestContext(now_wall=clock.wall())
    code = DeviceCode.read(json_payload(await send(grant.device_authorization_request(context))))
    say(f"Open {code.verification_uri} and enter the code {code.user_code}")
    if code.verification_uri_complete:
        say(f"  (or open {code.verification_uri_complete})")
    deadline = clock.monotonic() + code.expires_in
    interval = code.interval
    say(f"Waiting for the approval (the code expires in {code.expires_in:.0f} s)...")
    while clock.monotonic() < deadline:
        await clock.sleep(interval)
        started = clock.monotonic() - clock.wall() % 1
        request = grant.device_token_request(
            code.device_code, RequestContext(now_wall=clock.wall())
        )
        response = await send(request)
        try:
            refresh_token = grant.refresh_token_in(response, refreshing=False)
            issued = grant.read(response, refreshing=False, now_wall=clock.wall())
        except TokenEndpointError as exc:
            if exc.oauth_error == "authorization_pending":
                continue
            if exc.oauth_error == "slow_down":
                interval += SLOW_DOWN_STEP
                say(f"  the provider asked to poll more slowly: every {interval:g} s")
                continue
            if exc.oauth_error == "expired_token":
                raise TokenEndpointError("the user code expired before it was approved") from None
            if exc.oauth_error == "access_denied":
                raise TokenEndpointError("the authorization was denied") from None
            raise
        return Authorized(issued, refresh_token, started, bearer=issued.access_token)
    raise TokenEndpointError("the user code expired before it was approved")
