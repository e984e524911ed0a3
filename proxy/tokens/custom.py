"""The ``custom`` auth type as a :class:`~proxy.tokens.grant.Grant`: templated requests in,
tokens read by path out (no I/O).

Any 2xx answer is a success. Only the access token is required: an answer without a refresh
token keeps the one held, an answer without an expiry gets the JWT ``exp`` or ``default_ttl``.
A failed renewal always falls back to the full token request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.config.custom import CustomAuthConfig, TokenRequestConfig
from proxy.config.paths import JsonPath
from proxy.config.templates import placeholders, render
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import (
    TokenRequest,
    TokenResponse,
    TokenSender,
    check_status,
    json_object_or_none,
    read_json_object,
)
from proxy.tokens.grant import RequestContext
from proxy.tokens.model import (
    IssuedToken,
    bounded_lifetime,
    jwt_lifetime,
    parse_expires_in,
    usable_refresh_token,
    validate_token,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Paths:
    access: JsonPath
    refresh: JsonPath | None
    expires: JsonPath | None


def _form_value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


class CustomGrant:
    def __init__(self, config: CustomAuthConfig, connector: str) -> None:
        self.config = config
        self.connector = connector
        self._credentials = config.template_values()
        self._token_paths = _Paths(
            config.access_token_path, config.refresh_token_path, config.expires_path
        )
        renewal = config.refresh_request
        self._refresh_paths = self._token_paths
        self._refresh_needs: set[str] = set()
        if renewal is not None:
            self._refresh_paths = _Paths(
                renewal.access_token_path or config.access_token_path,
                renewal.refresh_token_path or config.refresh_token_path,
                renewal.expires_path or config.expires_path,
            )
            self._refresh_needs = placeholders(
                [renewal.body.get_secret_value() if renewal.body else None]
                + [
                    v.get_secret_value()
                    for v in (*renewal.query.values(), *renewal.headers.values())
                ]
            ) & {"refresh_token", "access_token"}

    has_primary_grant = True

    async def prepare(self, send: TokenSender) -> None:
        """Nothing to discover: a custom request names its URL."""

    def seed_refresh_token(self) -> str | None:
        return None

    def refresh_rejected(self, error: TokenEndpointError) -> bool:
        return True  # whatever went wrong, the full token request may still work

    def _request(
        self, template: TokenRequestConfig, current: RequestContext, *, replayable: bool
    ) -> TokenRequest:
        values = dict(self._credentials)
        if current.access_token is not None:
            values["access_token"] = current.access_token
        if current.refresh_token is not None:
            values["refresh_token"] = current.refresh_token
        body = render(template.body.get_secret_value(), values) if template.body else None
        form = json = None
        if body is not None and template.body_format == "form":
            form = {key: _form_value(item) for key, item in body.items()}
        elif body is not None:
            json = body
        return TokenRequest(
            url=template.url,
            method=template.method,
            form=form,
            json=json,
            query={k: render(v.get_secret_value(), values) for k, v in template.query.items()}
            or None,
            headers={k: render(v.get_secret_value(), values) for k, v in template.headers.items()},
            replayable=replayable,
        )

    def primary_request(self, current: RequestContext) -> TokenRequest:
        return self._request(self.config.token_request, current, replayable=True)

    def refresh_request(self, current: RequestContext) -> TokenRequest | None:
        renewal = self.config.refresh_request
        if renewal is None:
            return None
        held = {"refresh_token": current.refresh_token, "access_token": current.access_token}
        if any(held[name] is None for name in self._refresh_needs):
            return None  # nothing to renew with yet: the full token request it is
        return self._request(renewal, current, replayable=False)

    def read(self, response: TokenResponse, *, refreshing: bool, now_wall: float) -> IssuedToken:
        check_status(response)
        paths = self._refresh_paths if refreshing else self._token_paths
        payload: dict[str, Any] | None
        if self.config.token_header:
            token = validate_token(response.headers.get(self.config.token_header), "token header")
            try:
                payload = read_json_object(response)
            except TokenEndpointError:
                payload = None  # the body may be anything when the token is in a header
        else:
            payload = read_json_object(response)
            found = paths.access.find(payload)
            if found is None:
                raise TokenEndpointError(
                    f"the token endpoint's answer has nothing at {paths.access.text}"
                )
            token = validate_token(found, f"value at {paths.access.text}")
        raw_expiry = paths.expires.find(payload) if paths.expires and payload else None
        lifetime = self._lifetime(raw_expiry, paths.expires, now_wall)
        if lifetime is None:
            lifetime = jwt_lifetime(token, now_wall)
        if lifetime is None:
            lifetime = self.config.default_ttl
        return IssuedToken(token, bounded_lifetime(lifetime, self.config.max_ttl, self.connector))

    def refresh_token_in(self, response: TokenResponse, *, refreshing: bool) -> str | None:
        paths = self._refresh_paths if refreshing else self._token_paths
        payload = json_object_or_none(response) if paths.refresh else None
        if payload is None or paths.refresh is None:
            return None
        return usable_refresh_token(paths.refresh.find(payload))

    def _lifetime(self, raw: Any, path: JsonPath | None, now_wall: float) -> float | None:
        """Seconds left, from the expiry value in the configured ``expires_type``."""
        if raw is None or path is None:
            return None
        kind = self.config.expires_type
        if kind == "datetime":
            seconds = _parse_datetime(raw, path.text) - now_wall
        else:
            number = parse_expires_in(raw, f"the expiry at {path.text}")
            assert number is not None
            seconds = {
                "seconds": number,
                "milliseconds": number / 1000,
                "epoch_seconds": number - now_wall,
                "epoch_milliseconds": number / 1000 - now_wall,
            }[kind]
        if seconds <= 0:
            # Already expired: used for the requests that waited for it, never cached; the
            # fetch rate limit keeps a provider that always says so from causing a storm.
            logger.warning(
                "connector %s: the token endpoint issued an expired token", self.connector
            )
            return 0.0
        return seconds


def _parse_datetime(raw: Any, where: str) -> float:
    """ISO 8601 with ``Z``, an offset, or no zone (taken as UTC), as a POSIX timestamp."""
    if not isinstance(raw, str):
        raise TokenEndpointError(f"the expiry at {where} is not an ISO 8601 datetime")
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise TokenEndpointError(f"the expiry at {where} is not an ISO 8601 datetime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
