"""The ``custom`` auth type: any vendor's token request, described in config.

A request is a template (``url``, ``method``, ``query``, ``headers``, ``body``) whose strings
may use ``{{client_id}}``, ``{{client_secret}}``, ``{{username}}``, ``{{password}}``,
``{{refresh_token}}`` and ``{{access_token}}``. The token, refresh token and expiry are read
from the JSON answer by path (:mod:`proxy.config.paths`), or the token from a header.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import orjson

from proxy.config.base import Before, HeaderName, Secret, SecretStr, block
from proxy.config.oauth2 import EndpointURL, TokenLifecycleConfig, json_object
from proxy.config.paths import JsonPathField, parse_path
from proxy.config.templates import NAMES, placeholders


def _json_or_value(value: Any) -> Any:
    """A body may be written as a JSON string, as several products store it."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            raise ValueError("must be a mapping, or a JSON object as a string") from None
    return value


def _body(value: Any) -> Any:
    value = _json_or_value(value)
    if value is not None and not isinstance(value, dict):
        raise ValueError("must be a mapping, or a JSON object as a string")
    return value


Parameters = Annotated[dict[str, SecretStr], Before(json_object)]


@block
class TokenRequestConfig:
    """One HTTP request to a token endpoint. Values are secret: they often hold passwords."""

    url: EndpointURL
    method: Literal["GET", "POST", "PUT"] = "POST"
    query: Parameters = dataclasses.field(default_factory=dict)
    headers: Annotated[dict[HeaderName, SecretStr], Before(json_object)] = dataclasses.field(
        default_factory=dict
    )
    body: Annotated[Secret[dict[str, Any]] | None, Before(_body)] = None
    body_format: Literal["form", "json"] = "form"

    def __post_init__(self) -> None:
        body = self.body.get_secret_value() if self.body is not None else None
        if body is not None and self.method == "GET":
            raise ValueError("a GET request cannot have a body: put the fields in 'query'")
        if body is not None and self.body_format == "form":
            if any(isinstance(v, dict | list) for v in body.values()):
                raise ValueError("a form body must be flat: nested values need body_format: json")
        used = placeholders(body) | placeholders(
            [v.get_secret_value() for v in (*self.query.values(), *self.headers.values())]
        )
        unknown = sorted(used - NAMES)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{{' + n + '}}' for n in unknown)}; known: "
                + ", ".join(sorted(NAMES))
            )


@block
class RefreshRequestConfig(TokenRequestConfig):
    """The renewal request; its paths default to those of the token request."""

    access_token_path: JsonPathField | None = None
    refresh_token_path: JsonPathField | None = None
    expires_path: JsonPathField | None = None


@block
class CustomAuthConfig(TokenLifecycleConfig):
    type: Literal["custom"]
    token_request: TokenRequestConfig
    refresh_request: RefreshRequestConfig | None = None
    access_token_path: JsonPathField = parse_path("access_token")
    refresh_token_path: JsonPathField | None = None
    expires_path: JsonPathField | None = parse_path("expires_in")
    expires_type: Literal[
        "seconds", "milliseconds", "datetime", "epoch_seconds", "epoch_milliseconds"
    ] = "seconds"
    token_header: HeaderName | None = None  # take the token from this response header
    client_id: SecretStr | None = None
    client_secret: SecretStr | None = None
    username: SecretStr | None = None
    password: SecretStr | None = None

    def template_values(self) -> dict[str, str]:
        """The credentials that placeholders may name (tokens are added per request)."""
        fields = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "username": self.username,
            "password": self.password,
        }
        return {name: v.get_secret_value() for name, v in fields.items() if v is not None}
