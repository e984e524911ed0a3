"""Credentials per calling client (``per_client``): each client named in ``clients.api_keys``
gets its own token from its own credentials (own single flight, own store entry), others
the connector's, or 403 where the connector has none; names show, keys never do."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config.loader import load_settings, parse_yaml
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.errors import ConfigError
from proxy.log_output import JsonFormatter
from tests.conftest import StartProxy, WriteConfig, connector_status, oauth2_connector
from tests.fakes import FakeClock, FakeIdP, RecordingUpstream
from tests.test_cli import tokenproxy
from tests.test_examples_e2e import pointed_at
from tests.test_metrics import moved, scrape, value

KEYS = {
    "billing": "billing-key-9f8e7d6c5b4a39281706",
    "reports": "reports-key-0a1b2c3d4e5f60718293",
    "web": "web-key-aa55bb66cc77dd88ee99ff00",
}


def per_client_config(upstream: RecordingUpstream, idp: FakeIdP, **fields: Any) -> dict[str, Any]:
    """Connector ``api`` on the fake provider: client credentials of its own; ``billing``
    its own client, ``reports`` the password grant as a user of its own."""
    idp.clients["billing-app"] = "billing-secret-value-123456"
    idp.users["reports-svc"] = "reports-password-value-7890"
    api = oauth2_connector(upstream.url, idp.url)
    api["per_client"] = {
        "billing": {"client_id": "billing-app", "client_secret": "billing-secret-value-123456"},
        "reports": {
            "grant": "password",
            "username": "reports-svc",
            "password": "reports-password-value-7890",
        },
    }
    api.update(fields)
    return {"clients": {"api_keys": KEYS}, "connectors": {"api": api}}


def as_client(name: str) -> dict[str, str]:
    return {"Proxy-Authorization": f"Bearer {KEYS[name]}"}


def who_asked(call: dict[str, Any]) -> tuple[str, str, str | None]:
    """(grant type, client id from the Basic credentials, username) of a token request."""
    basic = call["headers"]["Authorization"].removeprefix("Basic ")
    client_id = base64.b64decode(basic).decode().split(":", 1)[0]
    return call["form"]["grant_type"], client_id, call["form"].get("username")


def bearer(upstream: RecordingUpstream, index: int) -> str:
    (value,) = upstream.header_values("Authorization", index)
    return value.removeprefix("Bearer ")


async def test_each_client_gets_its_own_token_once_however_many_requests_wait(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(per_client_config(upstream, idp), clock)
    idp.delay = 0.05  # every client's requests wait on its one token request

    async def call(name: str) -> str:
        async with client.get(f"{proxy.url}/api/{name}", headers=as_client(name)) as response:
            assert response.status == 200
        return name

    names = [name for name in KEYS for _ in range(10)]
    await asyncio.gather(*(call(name) for name in names))
    asked = sorted(who_asked(c) for c in idp.calls if c["path"] == "/token")
    assert asked == [  # one token request per (connector, client), each with its credentials
        ("client_credentials", "billing-app", None),
        ("client_credentials", "demo-client", None),
        ("password", "demo-client", "reports-svc"),
    ]
    tokens: dict[str, set[str]] = {}
    for index, request in enumerate(upstream.requests):
        tokens.setdefault(request["path"].rsplit("/", 1)[-1], set()).add(bearer(upstream, index))
    assert all(len(seen) == 1 for seen in tokens.values())  # one token per client...
    assert len(set().union(*tokens.values())) == 3  # ...and no two clients share one


async def test_a_client_without_an_entry_gets_403_where_the_connector_has_no_auth(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    client: aiohttp.ClientSession,
) -> None:
    config = {
        "clients": {"api_keys": KEYS},
        "connectors": {
            "api": {
                "route": "/api",
                "upstream": upstream.url,
                "per_client": {"billing": {"type": "static", "token": "billing-static-token"}},
            }
        },
    }
    proxy = await start_proxy(config)
    async with client.get(f"{proxy.url}/api/x", headers=as_client("web")) as response:
        assert response.status == 403
        body = await response.json()
    assert body["error"] == "forbidden" and body["connector"] == "api"
    assert "web" not in body["message"] and KEYS["web"] not in body["message"]
    assert upstream.requests == []  # refused before anything was sent
    async with client.get(f"{proxy.url}/api/x", headers=as_client("billing")) as response:
        assert response.status == 200
    assert upstream.header_values("Authorization") == ["Bearer billing-static-token"]


async def test_an_entry_like_the_connectors_own_still_keeps_a_token_of_its_own_across_restarts(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    api = oauth2_connector(upstream.url, idp.url)
    api["per_client"] = {"billing": {}}  # the same credentials: the same token material
    config = {
        "clients": {"api_keys": KEYS},
        "state_dir": str(tmp_path / "state"),
        "connectors": {"api": api},
    }
    for restart in range(2):
        proxy = await start_proxy(config, clock)
        for name in ("billing", "web"):
            async with client.get(f"{proxy.url}/api/{name}", headers=as_client(name)) as answer:
                assert answer.status == 200
        await proxy.server.stop()
        # Two tokens, each from the store after the restart: none fetched again.
        assert len([c for c in idp.calls if c["path"] == "/token"]) == 2, restart
    assert bearer(upstream, 0) != bearer(upstream, 1)
    assert bearer(upstream, 0) == bearer(upstream, 2) and bearer(upstream, 1) == bearer(upstream, 3)


async def test_names_show_in_connectors_metrics_and_logs_and_keys_never(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await start_proxy(per_client_config(upstream, idp), clock)
    admin = aiohttp.ClientSession(headers=as_client("web"))  # admin paths want a key too
    try:
        before = await scrape(admin, proxy.url)
        with caplog.at_level(logging.DEBUG):
            for name in ("billing", "billing", "web"):
                async with client.get(f"{proxy.url}/api/x", headers=as_client(name)) as answer:
                    assert answer.status == 200
            status = await connector_status(admin, proxy)
            async with admin.get(f"{proxy.url}/_proxy/metrics") as answer:
                exposition = await answer.text()
        after = moved(before, await scrape(admin, proxy.url))
    finally:
        await admin.close()
    assert status["clients"]["billing"]["state"] == "valid"
    assert status["clients"]["reports"]["state"] == "none"  # asked for nothing yet
    assert status["clients"]["billing"]["auth"] == {"type": "oauth2", "header": "Authorization"}
    assert value(after, "tokenproxy_client_requests_total", connector="api", client="billing") == 2
    assert value(after, "tokenproxy_client_requests_total", connector="api", client="web") == 1
    outcome = {"connector": "api/billing", "outcome": "success"}
    assert value(after, "tokenproxy_token_requests_total", **outcome) == 1
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert any('"client_name":"billing"' in line for line in lines)
    assert any("connector api/billing: obtained a token" in line for line in lines)
    secrets = [*KEYS.values(), "billing-secret-value-123456", "reports-password-value-7890"]
    shown = "\n".join([*lines, str(status), exposition])
    assert not [secret for secret in secrets if secret in shown]


async def test_a_tunnel_carries_its_connects_client(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
) -> None:
    config = per_client_config(upstream, idp, hosts=["api.example.test"])
    proxy = await start_proxy(config, clock)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        key = KEYS["billing"]
        writer.write(
            f"CONNECT api.example.test:80 HTTP/1.1\r\nHost: api.example.test:80\r\n"
            f"Proxy-Authorization: Bearer {key}\r\n\r\n".encode()
        )
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200"
        )
        writer.write(b"GET /x HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    (call,) = [c for c in idp.calls if c["path"] == "/token"]
    assert who_asked(call) == ("client_credentials", "billing-app", None)


@pytest.mark.parametrize(
    ("fields", "clients", "problems"),
    [
        (
            {"per_client": {"billingg": {"client_id": "x"}}},
            KEYS,
            [
                "connectors.api.per_client.billingg: no client of that name in clients.api_keys "
                "(billing, reports, web)"
            ],
        ),
        (
            {"per_client": {"billing": {"client_id": "x"}}},
            None,
            [
                "connectors.api.per_client.billing: no client of that name in clients.api_keys "
                "(none: clients.api_keys is not set)"
            ],
        ),
        (
            {"per_client": {"billing": {"grant": "password", "username": "u"}}},
            KEYS,
            [
                "connectors.api.per_client.billing: grant 'password' with client_auth "
                "'client_secret_basic' needs password"
            ],
        ),
        (
            {"per_client": {"billing": {"scope_separator": 3}}},
            KEYS,
            ["connectors.api.per_client.billing.scope_separator: Input should be a valid string"],
        ),
        (  # the connector's own mistake is named once, at auth, not again per client
            {"per_client": {"billing": {"client_id": "x"}}, "auth_extra": {"max_ttl": -1}},
            KEYS,
            ["connectors.api.auth.max_ttl: Input should be greater than 0"],
        ),
        (
            {"per_client": {"billing": {"type": "static"}}},
            KEYS,
            ["connectors.api.per_client.billing.token: Field required"],
        ),
        (
            {"auth": None, "per_client": {}},
            KEYS,
            ["connectors.api: needs 'auth' (or 'per_client' credentials for its clients)"],
        ),
        (  # a single-use seed is never shared: each owner brings its own
            {
                "auth_extra": {"grant": "refresh_token", "refresh_token": "seed-of-the-connector"},
                "per_client": {"billing": {"scopes": ["billing"]}},
            },
            KEYS,
            [
                "connectors.api.per_client.billing: grant 'refresh_token' with client_auth "
                "'client_secret_basic' needs refresh_token"
            ],
        ),
        (
            {"per_client": {"billing": {}}},
            {"billing": "one-key-for-two-0123456789", "web": "one-key-for-two-0123456789"},
            ["clients.api_keys: billing and web have the same key; each needs its own"],
        ),
        (
            {"per_client": {"bill.ing": {}}},
            {"bill.ing": "a-key-0123456789abcdefgh"},
            [
                "clients.api_keys: client name 'bill.ing' may hold only letters, digits, - and _",
            ],
        ),
    ],
)
def test_per_client_mistakes_are_refused_by_field_path(
    write_config: WriteConfig,
    fields: dict[str, Any],
    clients: dict[str, str] | None,
    problems: list[str],
) -> None:
    api = oauth2_connector("https://api.example.test", "https://idp.example.test")
    api["auth"].update(fields.pop("auth_extra", {}))
    api.update(fields)
    if api.get("auth") is None:
        del api["auth"]
    config: dict[str, Any] = {"connectors": {"api": api}}
    if clients is not None:
        config["clients"] = {"api_keys": clients}
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(config))
    assert caught.value.problems == problems
    assert not [k for k in KEYS.values() if k in str(caught.value.problems)]


async def test_the_per_client_example_runs_end_to_end(
    start_proxy: StartProxy,
    write_config: WriteConfig,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
    clock: FakeClock,
) -> None:
    example = Path(__file__).parent.parent / "config/examples/per-client-credentials.yaml"
    config = pointed_at(parse_yaml(example.read_text()), idp.url, upstream.url)
    loaded = load_settings(write_config(config)).settings
    crm = loaded.connectors["crm"]
    assert isinstance(crm.auth, OAuth2AuthConfig) and crm.auth.client_id
    idp.clients[crm.auth.client_id] = "replace-me"
    for auth in (crm.auth, *crm.per_client.values()):
        assert isinstance(auth, OAuth2AuthConfig) and auth.username and auth.password
        idp.users[auth.username] = auth.password.get_secret_value()
    proxy = await start_proxy(config, clock)
    for key in loaded.clients.api_keys.values():
        headers = {"Proxy-Authorization": f"Bearer {key.get_secret_value()}"}
        async with client.get(f"{proxy.url}/crm/accounts", headers=headers) as response:
            assert response.status == 200, await response.text()
    users = sorted(c["form"]["username"] for c in idp.calls if c["path"].endswith("/token"))
    assert users == ["billing-svc", "reports-svc", "shared-svc"]
    assert len({bearer(upstream, index) for index in range(3)}) == 3


async def test_check_and_token_name_clients_and_show_no_secret(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    path = write_config(per_client_config(upstream, idp))
    checked = await asyncio.to_thread(tokenproxy, "check", "-c", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "per client: billing, reports" in checked.stdout
    shown = await asyncio.to_thread(
        tokenproxy, "token", "api", "--client", "reports", "-c", str(path)
    )
    assert shown.returncode == 0, shown.stderr
    assert "api: Authorization: Bearer " in shown.stdout
    (call,) = [c for c in idp.calls if c["path"] == "/token"]
    assert who_asked(call) == ("password", "demo-client", "reports-svc")
    output = checked.stdout + checked.stderr + shown.stdout + shown.stderr
    secrets = [*KEYS.values(), "billing-secret-value-123456", "reports-password-value-7890"]
    assert not [secret for secret in [*secrets, *idp.issued] if secret in output]


async def test_a_reload_hands_each_clients_token_over(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
) -> None:
    proxy = await start_proxy(per_client_config(upstream, idp), clock)
    async with aiohttp.ClientSession(headers=as_client("billing")) as billing:
        for _ in range(2):
            async with billing.get(f"{proxy.url}/api/x") as response:
                assert response.status == 200
            async with billing.post(f"{proxy.url}/_proxy/reload") as response:
                assert response.status == 200
                kept = (await response.json())["kept_tokens"]
                assert kept == ["api", "api/billing", "api/reports"]
    assert len([c for c in idp.calls if c["path"] == "/token"]) == 1  # kept, not fetched again


def test_a_warning_about_the_connectors_auth_is_given_once(write_config: WriteConfig) -> None:
    api = oauth2_connector("https://api.example.test", "https://idp.example.test")
    api["auth"] |= {"grant": "password", "username": "shared", "password": "pw"}
    api["per_client"] = {"billing": {"username": "billing"}, "web": {"grant": "client_credentials"}}
    config = {"clients": {"api_keys": KEYS}, "connectors": {"api": api}}
    warnings = load_settings(write_config(config)).warnings
    assert [w for w in warnings if "password grant" in w] == [
        "connectors.api.auth.grant: the password grant is deprecated by RFC 9700 §2.4; "
        "prefer client credentials where the provider offers them"
    ]


def test_an_entry_of_another_grant_takes_over_only_what_that_grant_reads(
    write_config: WriteConfig,
) -> None:
    api = oauth2_connector("https://api.example.test", "https://idp.example.test")
    api["auth"] |= {
        "grant": "authorization_code",
        "authorization_url": "https://idp.example.test/authorize",
        "token_store": "consent-tokens.json",
    }
    api["per_client"] = {"billing": {"grant": "client_credentials", "scopes": ["billing"]}}
    config = {"clients": {"api_keys": KEYS}, "connectors": {"api": api}}
    billing = load_settings(write_config(config)).settings.connectors["api"].per_client["billing"]
    assert isinstance(billing, OAuth2AuthConfig)
    assert (billing.grant, billing.client_id, billing.scope) == (
        "client_credentials",
        "demo-client",
        "billing",
    )
    assert billing.authorization_url is None and billing.token_store is None


async def test_tokenproxy_token_refuses_a_client_it_does_not_know(
    write_config: WriteConfig, upstream: RecordingUpstream, idp: FakeIdP
) -> None:
    path = write_config(per_client_config(upstream, idp))
    shown = await asyncio.to_thread(
        tokenproxy, "token", "api", "--client", "billin", "-c", str(path)
    )
    assert shown.returncode == 1
    assert "no client 'billin' in clients.api_keys (billing, reports, web)" in shown.stderr
    assert idp.calls == []


async def test_an_admin_refresh_renews_every_credential_even_when_one_fails(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    clock: FakeClock,
) -> None:
    config = per_client_config(upstream, idp)
    config["connectors"]["api"]["per_client"]["billing"]["client_secret"] = "a-wrong-secret-1234"
    proxy = await start_proxy(config, clock)
    async with aiohttp.ClientSession(headers=as_client("web")) as admin:
        async with admin.post(f"{proxy.url}/_proxy/connectors/api/refresh") as response:
            assert response.status == 502  # billing's credentials are refused...
    asked = sorted(who_asked(c) for c in idp.calls if c["path"] == "/token")
    assert asked == [  # ...and the connector's own and reports' were renewed all the same
        ("client_credentials", "billing-app", None),
        ("client_credentials", "demo-client", None),
        ("password", "demo-client", "reports-svc"),
    ]
