"""Every example in config/examples/ works end to end against the fakes.

Token endpoint and upstream URLs are pointed at the fake identity provider and the recording
upstream (their paths kept), the fake provider learns the example's credentials, and answers
to custom requests are shaped by the example's own paths. Signing keys, service-account
files and subject tokens named by ``${VAR}`` are made at test time (the service account's
``token_uri`` is the fake's). Each example must then obtain a token, forward a request with
it, and renew it once it expires.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.config.custom import CustomAuthConfig
from proxy.config.loader import parse_yaml
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.config.paths import JsonPath
from proxy.secrets.envelope import KEY_ENV, generate_key
from tests.conftest import RunningProxy, StartProxy
from tests.fakes import (
    SERVICE_ACCOUNT_EMAIL,
    FakeClock,
    FakeIdP,
    RecordingUpstream,
    answer,
    example_material,
)

EXAMPLES = {
    path.stem: parse_yaml(path.read_text())
    for path in sorted(
        (Path(__file__).resolve().parent.parent / "config" / "examples").glob("*.yaml")
    )
    # mtls needs TLS servers (run end to end in test_tls.py); per-client-credentials needs a
    # key per calling client (run end to end in test_per_client.py).
    if path.stem not in ("mtls", "per-client-credentials")
}
TOKEN_URL_KEYS = {"url", "token_url", "refresh_url", "authorization_url", "userinfo_url"}


def pointed_at(node: Any, idp: str, upstream: str, key: str = "") -> Any:
    """The config with every token URL moved to ``idp`` and upstreams to ``upstream``."""
    if isinstance(node, dict):
        return {k: pointed_at(v, idp, upstream, k) for k, v in node.items()}
    if (
        isinstance(node, str)
        and node.startswith("https://")
        and (key in TOKEN_URL_KEYS or key == "upstream")
    ):
        target = URL(upstream if key == "upstream" else idp)
        return str(
            URL(node).with_scheme("http").with_host(target.host or "").with_port(target.port)
        )
    return node


def document(values: dict[JsonPath, Any]) -> dict[str, Any]:
    """A JSON answer holding each value at its (dotted or JSONPath) path."""
    root: dict[str, Any] = {}
    for path, value in values.items():
        node: Any = root
        steps = path.steps
        for step, following in zip(steps, (*steps[1:], None), strict=True):
            if following is None:
                node[step] = value
            else:
                node = node.setdefault(step, {})
    return root


def expiry(kind: str, seconds: int, wall: float) -> Any:
    return {
        "seconds": seconds,
        "milliseconds": seconds * 1000,
        "epoch_seconds": wall + seconds,
        "epoch_milliseconds": (wall + seconds) * 1000,
        "datetime": datetime.datetime.fromtimestamp(wall + seconds, datetime.UTC).isoformat(),
    }[kind]


def script_custom(idp: FakeIdP, auth: CustomAuthConfig, wall: float, *, refreshing: bool) -> str:
    """Queue the answer a custom example's request expects; return the token it carries."""
    token = f"tok-{'renewed' if refreshing else 'first'}"
    renewal = auth.refresh_request if refreshing else None
    values = {(renewal and renewal.access_token_path) or auth.access_token_path: token}
    refresh_path = (renewal and renewal.refresh_token_path) or auth.refresh_token_path
    if refresh_path:
        values[refresh_path] = f"rt-{token}"
    expires_path = (renewal and renewal.expires_path) or auth.expires_path
    if expires_path:
        values[expires_path] = expiry(auth.expires_type, 600, wall)
    idp.script.append(answer(200, document(values)))
    return token


def teach(idp: FakeIdP, auth: OAuth2AuthConfig, public_key: Any) -> None:
    """Make the fake provider accept this example's client, user and refresh token, its
    assertions' key and audience, or its subject token."""
    if auth.grant == "jwt_bearer":
        assertion = auth.assertion
        idp.bearer_keys[(assertion and assertion.issuer) or SERVICE_ACCOUNT_EMAIL] = public_key
        if assertion is not None and assertion.audience:
            idp.bearer_audiences.add(assertion.audience)
    if auth.subject_token is not None:
        idp.subject_tokens[auth.subject_token.get_secret_value()] = auth.subject_token_type
    if auth.subject_token_file is not None:
        subject = Path(auth.subject_token_file).read_text().strip()
        idp.subject_tokens[subject] = auth.subject_token_type
    if auth.grant in ("jwt_bearer", "token_exchange") and auth.client_secret is None:
        return  # no client to know
    assert auth.client_id and auth.client_secret
    idp.clients[auth.client_id] = auth.client_secret.get_secret_value()
    if auth.username and auth.password:
        idp.users[auth.username] = auth.password.get_secret_value()
    if auth.refresh_token:
        idp.seed_refresh_token(value=auth.refresh_token.get_secret_value())


async def consent_once(proxy: RunningProxy, name: str) -> None:
    """A person's one browser consent (the fake provider approves at once)."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as browser:
        url = f"{proxy.url}/_proxy/oauth/{name}/start"
        for _ in range(2):  # start -> the provider -> the callback
            async with browser.get(url, allow_redirects=False) as response:
                assert response.status == 302, await response.text()
                url = response.headers["Location"]
        async with browser.get(url) as page:
            assert page.status == 200 and "is now authorized" in await page.text()


@pytest.mark.parametrize("example", EXAMPLES.values(), ids=EXAMPLES.keys())
async def test_example_end_to_end(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    example: dict[str, Any],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    material, public_key = example_material(tmp_path, f"{idp.url}/token")
    for variable, value in material.items():
        monkeypatch.setenv(variable, value)
    config = pointed_at(example, idp.url, upstream.url)
    config.pop("state_dir", None)  # this test's own, beside its config file
    if config.get("cache", {}).get("backend") == "redis":
        # The test Redis, a prefix of this test's own, and the fleet's shared master key.
        config["cache"] |= {
            "url": request.getfixturevalue("redis_url"),
            "key_prefix": request.getfixturevalue("prefix"),
        }
        monkeypatch.setenv(KEY_ENV, generate_key())
    proxy = await start_proxy(config, clock)
    settings = proxy.server.settings
    ((name, connector),) = settings.connectors.items()
    auth = connector.auth
    route = connector.route or ""

    if isinstance(auth, OAuth2AuthConfig) and auth.grant == "authorization_code":
        teach(idp, auth, public_key)
        await consent_once(proxy, name)
    for refreshing in (False, True):
        if isinstance(auth, CustomAuthConfig):
            token = script_custom(idp, auth, clock.wall(), refreshing=refreshing)
        else:
            assert isinstance(auth, OAuth2AuthConfig)
            teach(idp, auth, public_key)
        async with client.get(f"{proxy.url}{route}/items") as response:
            assert response.status == 200, await response.text()
        sent = upstream.header_values(getattr(auth, "header", "Authorization"))
        if isinstance(auth, CustomAuthConfig):
            assert sent == [f"{auth.token_prefix} {token}".strip()]
        else:
            assert sent[0].removeprefix(f"{auth.token_prefix} ") in idp.issued
        clock.advance(3600 * 25)  # past any lifetime: the next request must renew

    token_requests = [call for call in idp.calls if not call.get("browser_flow")]
    assert len(token_requests) == 2, f"{name}: one token request, then one renewal"
    assert not idp.reuse_detected
