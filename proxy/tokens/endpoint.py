"""Sending one token request, and judging the answer.

Every failure becomes a :class:`~proxy.errors.TokenEndpointError` that says whether an
immediate retry may help. Nothing here logs a request or response body, a header, or the
provider's ``error_description``: providers quote what they were sent, secrets included.
Only the RFC 6749 error code is kept.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from proxy.egress.failures import classify
from proxy.egress.retries import retry_after
from proxy.egress.sessions import Egress
from proxy.errors import TokenEndpointError, TokenEndpointTimeoutError

MAX_RESPONSE_BYTES = 1024 * 1024
_ERROR_CODE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,40}/[a-z0-9!#$&^_.+-]{1,60}")


FormValue = str | tuple[str, ...]
"""A form parameter's value; a tuple is sent as the parameter repeated (RFC 8693 ``resource``)."""


def form_pairs(form: Mapping[str, FormValue] | None) -> list[tuple[str, str]] | None:
    """``form`` as the (name, value) pairs sent, a tuple's values each as its own pair."""
    if form is None:
        return None
    return [
        (name, item)
        for name, value in form.items()
        for item in ((value,) if isinstance(value, str) else value)
    ]


@dataclass(frozen=True)
class TokenRequest:
    """A token request, built without I/O by a grant and sent by :func:`send_token_request`.

    ``replayable`` is False for requests whose loss is ambiguous: a refresh-token grant the
    provider may have executed (rotating the token) before the answer was lost must not be
    sent again blindly (RFC 9700 §4.14).
    """

    url: str
    method: str = "POST"
    form: Mapping[str, FormValue] | None = field(default=None, repr=False)
    json: Any = field(default=None, repr=False)
    query: Mapping[str, str] | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    replayable: bool = True


TokenSender = Callable[["TokenRequest"], Awaitable["TokenResponse"]]
"""How the token manager sends a request: :func:`send_token_request` bound to an egress in
production, a recording fake in unit tests."""


@dataclass(frozen=True)
class TokenResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes = field(repr=False)


async def send_token_request(egress: Egress, request: TokenRequest) -> TokenResponse:
    """Send ``request``; never follow a redirect; read at most 1 MiB of answer."""
    assert egress.session is not None  # token endpoints always have one
    try:
        with egress.read_deadline():
            async with egress.session.request(
                request.method,
                request.url,
                params=request.query,
                data=form_pairs(request.form),
                json=request.json,
                headers=request.headers,
                allow_redirects=False,
                timeout=egress.timeout,
                **egress.options,
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise TokenEndpointError("the token endpoint's answer is larger than 1 MiB")
                return TokenResponse(response.status, response.headers, bytes(body))
    except (aiohttp.ClientError, TimeoutError) as exc:
        failure = classify(exc, "the token endpoint", tls=request.url.startswith("https:"))
        error = TokenEndpointTimeoutError if isinstance(exc, TimeoutError) else TokenEndpointError
        raise error(
            failure.message,
            # Nothing sent: always safe to try again; a certificate will not change.
            retryable=failure.kind == "connect" or (request.replayable and failure.kind != "tls"),
            proxy_status=failure.proxy_status,
        ) from None


def provider_now(response: TokenResponse, local_wall: float) -> float:
    """The provider's own time when it answered: its ``Date`` header, else ``local_wall``.

    Absolute expiries (a JWT ``exp``, an epoch or a datetime) are on the provider's clock;
    read against ours, a provider 10 minutes ahead would make us hold its token 10 minutes
    past its real expiry. Its ``Date`` (RFC 9110 §6.6.1) is on that same clock, so
    ``expiry - Date`` is the lifetime it meant, to the second, whatever the skew.
    """
    value = response.headers.get("Date")
    if value is None:
        return local_wall
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return local_wall
    if moment.tzinfo is None:  # "-0000": UTC, says RFC 5322 §3.3
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _oauth_error(body: bytes) -> str | None:
    """The ``error`` code of an RFC 6749 §5.2 answer, if it is a plausible code."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    code = payload.get("error") if isinstance(payload, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def check_status(response: TokenResponse) -> None:
    """Raise the classified error of any answer but a 2xx."""
    status = response.status
    if 300 <= status < 400:
        raise TokenEndpointError(
            f"the token endpoint answered {status} (a redirect, never followed)"
        )
    if status == 429 or status >= 500:
        raise TokenEndpointError(
            f"the token endpoint answered {status}",
            retryable=True,
            retry_after=retry_after(response.headers.get("Retry-After"), time.time()),
            proxy_status="destination_unavailable",
        )
    if status >= 400:
        # The provider refused our client or grant: wrong credentials or revoked consent.
        code = _oauth_error(response.body)
        reason = f"{status} {code}" if code else str(status)
        raise TokenEndpointError(
            f"the token endpoint refused the request ({reason})",
            oauth_error=code,
            proxy_status="proxy_configuration_error",
        )
    if status < 200:
        raise TokenEndpointError(f"the token endpoint answered {status}")


def read_json_object(response: TokenResponse) -> dict[str, Any]:
    """The answer's body as a JSON object; the error says only its media type otherwise."""
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        shown = media_type if _MEDIA_TYPE.fullmatch(media_type) else "unknown"
        raise TokenEndpointError(
            f"the token endpoint's answer is not JSON (Content-Type: {shown})"
        ) from None
    if not isinstance(payload, dict):
        raise TokenEndpointError("the token endpoint's answer is not a JSON object")
    return payload


def json_object_or_none(response: TokenResponse) -> dict[str, Any] | None:
    """The JSON object of a 2xx answer, or None for anything else; never raises."""
    if not 200 <= response.status < 300:
        return None
    try:
        payload = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def json_payload(response: TokenResponse) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or the classified error of any other answer."""
    check_status(response)
    return read_json_object(response)
