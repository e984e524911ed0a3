"""The grants as pure functions: token requests built and answers read, without sockets."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config.custom import CustomAuthConfig
from proxy.config.loader import validate
from proxy.errors import TokenEndpointError
from proxy.tokens.custom import CustomGrant
from proxy.tokens.endpoint import TokenResponse
from proxy.tokens.grant import RequestContext
from proxy.tokens.oauth2 import ASSERTION_TYPE, OAuth2Grant
from tests.conftest import oauth2_auth_config

NOW = 1_800_000_000.0


def response(body: Any, status: int = 200, **headers: str) -> TokenResponse:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return TokenResponse(status, CIMultiDictProxy(CIMultiDict(headers)), raw)


def oauth2(**fields: Any) -> OAuth2Grant:
    config = oauth2_auth_config(**{"client_id": "my id", "client_secret": "s&cret", **fields})
    return OAuth2Grant(config, "api")


def jwt_with(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


@pytest.mark.parametrize(
    ("client_auth", "form", "headers"),
    [
        ("client_secret_basic", {}, {"Authorization": "Basic bXkraWQ6cyUyNmNyZXQ="}),
        ("client_secret_post", {"client_id": "my id", "client_secret": "s&cret"}, {}),
        ("none", {"client_id": "my id"}, {}),
        ("tls_client_auth", {"client_id": "my id"}, {}),
    ],
)
def test_client_authentication_goes_in_the_header_or_the_body_never_both(
    client_auth: str, form: dict[str, str], headers: dict[str, str]
) -> None:
    request = oauth2(client_auth=client_auth, scopes=["a", "b"]).primary_request(
        RequestContext(now_wall=NOW)
    )
    assert request.form == {"grant_type": "client_credentials", "scope": "a b", **form}
    assert request.headers == headers
    assert request.replayable


def test_client_secret_jwt_signs_a_fresh_assertion_for_the_token_endpoint() -> None:
    grant = oauth2(client_auth="client_secret_jwt", client_secret="k" * 32)
    first, second = (grant.primary_request(RequestContext(now_wall=NOW)) for _ in range(2))
    assert first.form is not None and second.form is not None
    assert first.form["client_assertion_type"] == ASSERTION_TYPE
    assert first.form["client_assertion"] != second.form["client_assertion"]
    assert "client_secret" not in first.form and "Authorization" not in first.headers


def test_renewal_uses_the_refresh_token_held_and_is_never_replayed_blindly() -> None:
    grant = oauth2(grant="password", username="u", password="p")
    assert grant.refresh_request(RequestContext(now_wall=NOW)) is None
    request = grant.refresh_request(RequestContext(refresh_token="rt", now_wall=NOW))
    assert request is not None and not request.replayable
    assert request.form is not None
    assert (request.form["grant_type"], request.form["refresh_token"]) == ("refresh_token", "rt")


@pytest.mark.parametrize(
    ("body", "lifetime"),
    [
        ({"access_token": "t", "expires_in": 120}, 120),
        ({"access_token": "t", "expires_in": "120"}, 120),
        ({"access_token": jwt_with({"exp": NOW + 500})}, 500),
        ({"access_token": "t"}, 300),
        ({"access_token": "t", "expires_in": 10**9}, 86400),
    ],
)
def test_oauth2_lifetimes(body: dict[str, Any], lifetime: float) -> None:
    issued = oauth2().read(response(body), refreshing=False, now_wall=NOW)
    assert issued.lifetime == lifetime


@pytest.mark.parametrize(
    ("grant", "body", "expected"),
    [
        ("password", {"access_token": "t", "refresh_token": "rt2"}, "rt2"),
        ("password", {"access_token": "t", "refresh_token": "bad token"}, None),
        ("password", {"error": "x"}, None),
        ("client_credentials", {"access_token": "t", "refresh_token": "rt2"}, None),
    ],
)
def test_refresh_tokens_are_read_apart_and_never_raise(
    grant: str, body: dict[str, Any], expected: str | None
) -> None:
    extra = {"username": "u", "password": "p"} if grant == "password" else {}
    assert oauth2(grant=grant, **extra).refresh_token_in(response(body), refreshing=False) == (
        expected
    )
    assert (
        oauth2(grant=grant, **extra).refresh_token_in(response(body, status=400), refreshing=False)
        is None
    )


def custom(**fields: Any) -> CustomGrant:
    settings = {"type": "custom", "token_request": {"url": "https://idp.example/t"}, **fields}
    return CustomGrant(validate(CustomAuthConfig, settings), "api")


def read_custom_expiry(expires_type: str, value: Any) -> float:
    grant = custom(
        access_token_path="$.data.token", expires_path="data.exp", expires_type=expires_type
    )
    issued = grant.read(
        response({"data": {"token": "tok", "exp": value}}), refreshing=False, now_wall=NOW
    )
    assert issued.access_token == "tok"
    return issued.lifetime


@pytest.mark.parametrize(
    ("expires_type", "value"),
    [
        ("seconds", 600),
        ("milliseconds", 600_000),
        ("epoch_seconds", NOW + 600),
        ("epoch_milliseconds", (NOW + 600) * 1000),
        ("datetime", datetime.datetime.fromtimestamp(NOW + 600, datetime.UTC).isoformat()),
        ("datetime", datetime.datetime.fromtimestamp(NOW + 600, datetime.UTC).isoformat()[:19]),
    ],
    ids=["seconds", "milliseconds", "epoch-seconds", "epoch-ms", "datetime", "zoneless-is-utc"],
)
def test_custom_expiry_types(expires_type: str, value: Any) -> None:
    assert read_custom_expiry(expires_type, value) == pytest.approx(600)


def test_custom_negative_expiry_is_an_unusable_answer() -> None:
    with pytest.raises(TokenEndpointError, match="non-negative"):
        read_custom_expiry("seconds", -5)


def test_custom_token_from_a_header_and_a_body_that_is_anything() -> None:
    grant = custom(token_header="X-Auth-Token")
    issued = grant.read(
        response(b"<ok/>", **{"X-Auth-Token": "hdr"}), refreshing=False, now_wall=NOW
    )
    assert (issued.access_token, issued.lifetime) == ("hdr", 300)


def test_custom_renewal_waits_until_it_has_what_it_names() -> None:
    grant = custom(
        refresh_request={"url": "https://idp.example/r", "body": {"rt": "{{refresh_token}}"}},
        refresh_token_path="rt",
    )
    assert grant.refresh_request(RequestContext(now_wall=NOW)) is None
    request = grant.refresh_request(RequestContext(refresh_token="r1", now_wall=NOW))
    assert request is not None and request.form == {"rt": "r1"} and not request.replayable
    body = {"access_token": "t", "rt": "r2"}
    assert grant.refresh_token_in(response(body), refreshing=True) == "r2"
