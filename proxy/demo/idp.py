"""The demo identity provider: an OAuth2 token endpoint (RFC 6749) on loopback.

Grants: client credentials, password, refresh token with rotation, and the authorization
code (with PKCE, RFC 7636): ``GET`` with ``response_type`` is an authorization request that
a signed-in person approves at once, answered by a redirect with a single-use code; ``GET``
with a bearer token is the userinfo endpoint. Presenting a refresh
token that was already used revokes its whole family, as RFC 9700 §4.14 providers do, so a
client that ever runs two refreshes with the same token is caught. Client authentication by
``client_secret_basic`` (form-urlencoded before base64, RFC 6749 §2.3.1) or
``client_secret_post``, never both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

import orjson
from aiohttp import hdrs, web
from yarl import URL

DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"
DEMO_USERNAME = "demo-user"
DEMO_PASSWORD = "demo-password"


class OAuthError(Exception):
    def __init__(self, error: str, status: int = 400, description: str = "") -> None:
        super().__init__(error)
        self.error, self.status, self.description = error, status, description


@dataclass
class RefreshFamily:
    subject: str
    current: str
    revoked: bool = False


def oauth_json(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


class DemoIdentityProvider:
    """A token endpoint at every path (``POST``). ``expires_in``: the lifetime it grants."""

    def __init__(self, expires_in: int = 300) -> None:
        self.expires_in = expires_in
        self.clients = {DEMO_CLIENT_ID: DEMO_CLIENT_SECRET}
        self.users = {DEMO_USERNAME: DEMO_PASSWORD}
        self.families: dict[str, RefreshFamily] = {}
        self.codes: dict[str, dict[str, str]] = {}  # code -> what it was issued for
        self.subjects: dict[str, str] = {}  # access token -> subject (for userinfo)
        self.consent: dict[str, str] = {}  # added to the redirect (error=access_denied...)
        self.issuer: str | None = None  # when set, the redirect names it as iss (RFC 9207)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == hdrs.METH_GET and "response_type" in request.query:
            return self.authorize(dict(request.query))
        if request.method == hdrs.METH_GET and hdrs.AUTHORIZATION in request.headers:
            return self.userinfo(request.headers[hdrs.AUTHORIZATION])
        if request.method != hdrs.METH_POST:
            return oauth_json({"error": "not_found"}, status=404)
        form = {key: str(value) for key, value in (await request.post()).items()}
        try:
            return oauth_json(self.grant(request, form))
        except OAuthError as exc:
            body = {"error": exc.error}
            if exc.description:
                body["error_description"] = exc.description
            headers = {"WWW-Authenticate": "Basic"} if exc.status == 401 else {}
            response = oauth_json(body, status=exc.status)
            response.headers.update(headers)
            return response

    def authenticate_client(self, request: web.BaseRequest, form: dict[str, str]) -> str:
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None and "client_secret" in form:
            raise OAuthError("invalid_request", description="more than one client authentication")
        if header is not None:
            scheme, _, encoded = header.partition(" ")
            try:
                decoded = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise OAuthError("invalid_client", 401) from None
            if scheme.lower() != "basic" or ":" not in decoded:
                raise OAuthError("invalid_client", 401)
            raw_id, raw_secret = decoded.split(":", 1)
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(secret.encode(), expected.encode()):
            raise OAuthError("invalid_client", 401)
        return client_id

    def grant(self, request: web.BaseRequest, form: dict[str, str]) -> dict[str, Any]:
        client_id = self.authenticate_client(request, form)
        grant_type = form.get("grant_type")
        if grant_type == "client_credentials":
            return self.issue(client_id, with_refresh=False, scope=form.get("scope"))
        if grant_type == "password":
            username, password = form.get("username", ""), form.get("password", "")
            expected = self.users.get(username)
            if expected is None or not secrets.compare_digest(password.encode(), expected.encode()):
                raise OAuthError("invalid_grant", description="bad username or password")
            return self.issue(username, with_refresh=True, scope=form.get("scope"))
        if grant_type == "refresh_token":
            return self.refresh(form.get("refresh_token", ""))
        if grant_type == "authorization_code":
            return self.redeem(client_id, form)
        raise OAuthError("unsupported_grant_type")

    def authorize(self, query: dict[str, str]) -> web.StreamResponse:
        """RFC 6749 §4.1.1 with RFC 7636: a code for the request, or ``consent``'s error."""
        redirect = query.get("redirect_uri", "")
        if query.get("client_id") not in self.clients or not redirect:
            return web.Response(status=400, text="unknown client or no redirect_uri")
        answer = {"state": query.get("state", ""), **self.consent}
        if "error" not in answer:
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "client_id": query["client_id"],
                "redirect_uri": redirect,
                "challenge": query.get("code_challenge", ""),
                "method": query.get("code_challenge_method", ""),
                "scope": query.get("scope", ""),
            }
            answer = {"code": code, **answer}
        if self.issuer is not None:
            answer.setdefault("iss", self.issuer)
        location = URL(redirect).update_query(answer)
        return web.Response(status=302, headers={hdrs.LOCATION: str(location)})

    def redeem(self, client_id: str, form: dict[str, str]) -> dict[str, Any]:
        """RFC 6749 §4.1.3: once per code, for the same client and redirect_uri, with the
        verifier whose S256 challenge came with the authorization."""
        issued = self.codes.pop(form.get("code", ""), None)  # single use
        if issued is None or issued["client_id"] != client_id:
            raise OAuthError("invalid_grant", description="unknown or used code")
        if form.get("redirect_uri") != issued["redirect_uri"]:
            raise OAuthError("invalid_grant", description="redirect_uri mismatch")
        verifier = form.get("code_verifier")
        if issued["challenge"] or verifier is not None:
            digest = hashlib.sha256((verifier or "").encode()).digest()
            expected = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if issued["method"] != "S256" or expected != issued["challenge"]:
                raise OAuthError("invalid_grant", description="PKCE verification failed")
        return self.issue(DEMO_USERNAME, with_refresh=True, scope=issued["scope"] or None)

    def userinfo(self, authorization: str) -> web.StreamResponse:
        scheme, _, token = authorization.partition(" ")
        subject = self.subjects.get(token) if scheme == "Bearer" else None
        if subject is None:
            return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        profile = {"email": f"{subject}@example.test", "name": "Demo User"}
        return oauth_json({"sub": subject, "profile": profile, **profile})

    def refresh(self, presented: str) -> dict[str, Any]:
        family = self.families.get(presented)
        if family is None or family.revoked:
            raise OAuthError("invalid_grant", description="unknown or revoked refresh token")
        if presented != family.current:
            family.revoked = True  # reuse of a rotated token: revoke the whole family
            raise OAuthError("invalid_grant", description="refresh token reuse detected")
        token = self.issue(family.subject, with_refresh=False)
        family.current = secrets.token_urlsafe(24)
        self.families[family.current] = family
        token["refresh_token"] = family.current
        return token

    def issue(
        self, subject: str, *, with_refresh: bool, scope: str | None = None
    ) -> dict[str, Any]:
        access_token = "demo-at-" + secrets.token_urlsafe(24)
        self.subjects[access_token] = subject
        token: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }
        if scope:
            token["scope"] = scope
        if with_refresh:
            refresh_token = secrets.token_urlsafe(24)
            self.families[refresh_token] = RefreshFamily(subject, refresh_token)
            token["refresh_token"] = refresh_token
        return token
