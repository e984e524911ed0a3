"""Loading the config file: value sources, environment overrides, validation, cross-checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.config.loader import environment_overrides, load_settings
from proxy.errors import ConfigError
from tests.conftest import check_config

CANARY = "sec_CANARY_9f8e7d"
WriteConfig = Callable[[dict[str, Any]], Path]


def base_config(**connector_fields: Any) -> dict[str, Any]:
    crm = {
        "route": "/crm",
        "upstream": "https://api.crm.example.com/v2",
        "auth": {"type": "static", "token": "t"},
    }
    crm.update(connector_fields)
    return {"connectors": {"crm": crm}}


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        check_config(path)
    return info.value.problems


def test_minimal_config_gets_contract_defaults(write_config: WriteConfig) -> None:
    settings = load_settings(write_config(base_config())).settings
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    assert settings.admin.prefix == "/_proxy"
    crm = settings.connectors["crm"]
    assert crm.auth.type == "static"
    assert crm.auth.header == "Authorization" and crm.auth.token_prefix == "Bearer"
    assert (crm.timeouts.connect, crm.timeouts.read) == (10, 60)
    assert settings.server.keepalive_timeout == 30


def test_environment_overrides_nested_fields(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENPROXY_LISTEN__PORT", "9123")
    monkeypatch.setenv("TOKENPROXY_CONNECTORS__CRM__TIMEOUTS__READ", "5")
    monkeypatch.setenv("TOKENPROXY_CONNECTORS__CRM__AUTH__TOKEN", "from-env")
    # Variables of the CLI and key handling share the prefix but are not config fields.
    monkeypatch.setenv("TOKENPROXY_CONFIG", "/elsewhere.yaml")
    settings = load_settings(write_config(base_config())).settings
    assert settings.listen.port == 9123
    assert settings.connectors["crm"].timeouts.read == 5
    assert settings.connectors["crm"].auth.token.get_secret_value() == "from-env"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"TOKENPROXY_LISTEN__PORT": "9123"}, {"listen": {"port": "9123"}}),
        # JSON where the config wants a list, a map or a block...
        (
            {"TOKENPROXY_CONNECTORS__CRM__HOSTS": '["a.example"]'},
            {"connectors": {"crm": {"hosts": ["a.example"]}}},
        ),
        (
            {"TOKENPROXY_CLIENTS": '{"allow_cidrs": ["10.0.0.0/8"]}'},
            {"clients": {"allow_cidrs": ["10.0.0.0/8"]}},
        ),
        (
            {"TOKENPROXY_CONNECTORS__CRM__AUTH__SCOPES": '["a", "b"]'},
            {"connectors": {"crm": {"auth": {"scopes": ["a", "b"]}}}},
        ),
        # ... never where it wants a string: a token that looks like JSON stays one.
        (
            {"TOKENPROXY_CONNECTORS__CRM__AUTH__TOKEN": '["x"]'},
            {"connectors": {"crm": {"auth": {"token": '["x"]'}}}},
        ),
        (
            {"TOKENPROXY_CONNECTORS__CRM__PER_CLIENT__B__SCOPES": "a b"},
            {"connectors": {"crm": {"per_client": {"b": {"scopes": "a b"}}}}},
        ),
        # Names are read case-insensitively; below a config key, a misspelt key goes on to
        # be refused as unknown; what is not a config key is not read.
        ({"tokenproxy_state_dir": "/s"}, {"state_dir": "/s"}),
        ({"TOKENPROXY_LISTEN__PORTT": "1"}, {"listen": {"portt": "1"}}),
        ({"TOKENPROXY_CONFIG": "/x", "TOKENPROXY_MASTER_KEY": "k", "OTHER_LISTEN__PORT": "1"}, {}),
    ],
)
def test_environment_variables_as_config(
    variables: dict[str, str], expected: dict[str, Any]
) -> None:
    """As pydantic-settings read them (nested delimiter ``__``), which earlier releases used."""
    assert environment_overrides(variables) == expected


def test_a_block_given_as_something_else_says_so(write_config: WriteConfig) -> None:
    config = base_config(timeouts=[1], retries=3)
    problems = problems_of(write_config({**config, "listen": 5}))
    assert problems == [
        f"{where}: must be a mapping of keys to values"
        for where in ("listen", "connectors.crm.timeouts", "connectors.crm.retries")
    ]


def test_command_line_overrides_beat_the_environment(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENPROXY_LISTEN__PORT", "9123")
    loaded = load_settings(write_config(base_config()), {"listen": {"port": 9200}})
    assert loaded.settings.listen.port == 9200


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        ("${TP_TOKEN}", {"TP_TOKEN": "abc"}, "abc"),
        ("pre-${TP_TOKEN}-post", {"TP_TOKEN": "abc"}, "pre-abc-post"),
        ("${TP_UNSET:-fallback}", {}, "fallback"),
        ("${TP_EMPTY:-fallback}", {"TP_EMPTY": ""}, "fallback"),
        ("${TP_TOKEN:-fallback}", {"TP_TOKEN": "set"}, "set"),
        ("$${TP_TOKEN}", {"TP_TOKEN": "abc"}, "${TP_TOKEN}"),
        # A value is never interpreted twice: a variable holding `file:` stays a string.
        ("${TP_TOKEN}", {"TP_TOKEN": "file:/etc/passwd"}, "file:/etc/passwd"),
    ],
)
def test_environment_variable_sources(
    write_config: WriteConfig,
    monkeypatch: pytest.MonkeyPatch,
    raw: str,
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(write_config(base_config(auth={"type": "static", "token": raw})))
    token = settings.settings.connectors["crm"].auth.token  # type: ignore[union-attr]
    assert token.get_secret_value() == expected


def test_file_source_reads_the_whole_value_without_trailing_newline(
    write_config: WriteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("TP_DIR", str(tmp_path))
    path = write_config(base_config(auth={"type": "static", "token": "file:${TP_DIR}/token"}))
    token = load_settings(path).settings.connectors["crm"].auth.token  # type: ignore[union-attr]
    assert token.get_secret_value() == "from-file"


def test_non_string_fields_take_sources_too(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TP_PORT", "8181")
    config = {**base_config(), "listen": {"port": "${TP_PORT}"}}
    assert load_settings(write_config(config)).settings.listen.port == 8181


def test_every_problem_is_reported_at_once_with_its_path(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = {
        "listen": {"port": 70000, "hots": "x"},
        "admin": {"prefix": "no-slash"},
        "connectors": {
            "crm": {
                "route": "/crm",
                "upstream": "ftp://api.example.com",
                "auth": {"type": "static", "tokn": "x"},
                "timeout": {},
            },
            "erp": {
                "route": "/erp",
                "upstream": "https://erp.example.com",
                "auth": {"type": "basic", "username": "u", "password": "${TP_NOT_SET}"},
            },
            "hr": {
                "route": "/hr",
                "upstream": "https://hr.example.com",
                "auth": {"type": "static", "token": f"file:{tmp_path}/missing"},
            },
            "bi": {"route": "/bi", "upstream": "https://bi.example.com", "auth": {"type": "magic"}},
        },
    }
    problems = problems_of(write_config(config))
    expected = [
        "listen.port: Input should be less than or equal to 65535",
        "listen.hots: unknown key",
        "admin.prefix: must start with '/'",
        "connectors.crm.upstream: must be an absolute http:// or https:// URL",
        "connectors.crm.auth.token: Field required",
        "connectors.crm.auth.tokn: unknown key",
        "connectors.crm.timeout: unknown key",
        "connectors.erp.auth.password: environment variable TP_NOT_SET is not set",
        f"connectors.hr.auth.token: cannot read file {tmp_path}/missing "
        "(No such file or directory)",
    ]
    for line in expected:
        assert line in problems
    assert any(p.startswith("connectors.bi.auth: Input tag 'magic'") for p in problems)
    assert len(problems) == len(expected) + 1


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"route": "crm"}, "connectors.crm.route: must start with '/'"),
        (
            {"route": "/a/../b"},
            "connectors.crm.route: must not contain empty, '.' or '..' segments",
        ),
        (
            {"route": "/a%2fb"},
            "connectors.crm.route: may not contain '?', '#', '%', ';', '\\', spaces or controls",
        ),
        (
            {"hosts": ["http://api.example.com"]},
            "connectors.crm.hosts.0: must be a hostname with an optional :port, without a scheme "
            "or path",
        ),
        (
            {"upstream": "https://user:pw@api.example.com"},
            "connectors.crm.upstream: must not carry credentials: put them in 'auth'",
        ),
        (
            {"upstream": "https://api.example.com/v1?key=x"},
            "connectors.crm.upstream: must not have a query string or fragment",
        ),
        (
            {"timeouts": {"connect": 0}},
            "connectors.crm.timeouts.connect: Input should be greater than 0",
        ),
        (
            {"auth": {"type": "static", "token": "t", "header": "Bad Header"}},
            "connectors.crm.auth.header: must be an HTTP header name (letters, digits and "
            "!#$%&'*+-.^_`|~)",
        ),
        (
            {"auth": {"type": "static", "token": "t", "token_prefix": "Bearer\r\nX-Evil: 1"}},
            "connectors.crm.auth.token_prefix: may hold only printable ASCII characters (no CR, "
            "LF or controls)",
        ),
        ({"auth": {"type": "static", "token": ""}}, "connectors.crm.auth.token: must not be empty"),
        (
            {"auth": {"type": "static", "token": "t", "header": "X-Key\n"}},
            "connectors.crm.auth.header: must be an HTTP header name (letters, digits and "
            "!#$%&'*+-.^_`|~)",
        ),
        (
            {"auth": {"type": "static", "token": "t", "token_prefix": "Bearer\n"}},
            "connectors.crm.auth.token_prefix: may hold only printable ASCII characters (no CR, "
            "LF or controls)",
        ),
        (
            {"hosts": ["api.example.com\n"]},
            "connectors.crm.hosts.0: must be a hostname with an optional :port, without a scheme "
            "or path",
        ),
        (
            {"auth": {"type": "basic", "username": "a:b", "password": "p"}},
            "connectors.crm.auth.username: must not contain ':' (RFC 7617 §2)",
        ),
        ({"auth": {}}, "connectors.crm.auth: Unable to extract tag using discriminator 'type'"),
    ],
)
def test_field_rules(write_config: WriteConfig, fields: dict[str, Any], problem: str) -> None:
    assert problems_of(write_config(base_config(**fields))) == [problem]


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (
            {
                "connectors": {
                    "a": {
                        "route": "/x/",
                        "upstream": "https://a.example",
                        "auth": {"type": "none"},
                    },
                    "b": {"route": "/x", "upstream": "https://b.example", "auth": {"type": "none"}},
                }
            },
            "connectors.b.route: '/x' is already the route of connector 'a'",
        ),
        (
            {"connectors": {"a": {"upstream": "https://a.example", "auth": {"type": "none"}}}},
            "connectors.a: needs a 'route', 'hosts', or both",
        ),
        (
            {
                "connectors": {
                    "a": {
                        "hosts": ["API.example.com"],
                        "upstream": "https://a.example",
                        "auth": {"type": "none"},
                    },
                    "b": {
                        "hosts": ["api.example.com"],
                        "upstream": "https://b.example",
                        "auth": {"type": "none"},
                    },
                }
            },
            "connectors.b.hosts: 'api.example.com' is already a host of connector 'a'",
        ),
        (
            {
                "connectors": {
                    "a": {
                        "route": "/_proxy/x",
                        "upstream": "https://a.example",
                        "auth": {"type": "none"},
                    }
                }
            },
            "connectors.a.route: '/_proxy/x' lies under the admin prefix '/_proxy'",
        ),
        (
            {"listen": {"host": "0.0.0.0"}},
            "listen.host: '0.0.0.0' is not a loopback address; a public listener needs "
            "'clients.allow_cidrs' or 'clients.api_keys' to restrict who may use the "
            "credentials it injects",
        ),
    ],
)
def test_cross_field_rules(write_config: WriteConfig, config: dict[str, Any], problem: str) -> None:
    assert problems_of(write_config(config)) == [problem]


@pytest.mark.parametrize("clients", [{"allow_cidrs": ["10.0.0.0/8"]}, {"api_keys": ["k"]}])
def test_public_listener_is_allowed_when_clients_are_restricted(
    write_config: WriteConfig, clients: dict[str, Any]
) -> None:
    config = {**base_config(), "listen": {"host": "0.0.0.0"}, "clients": clients}
    assert load_settings(write_config(config)).settings.listen.host == "0.0.0.0"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost"])
def test_loopback_listeners_need_no_client_restriction(
    write_config: WriteConfig, host: str
) -> None:
    config = {**base_config(), "listen": {"host": host}}
    assert load_settings(write_config(config)).settings.listen.host == host


@pytest.mark.parametrize(
    ("upstream", "warned"),
    [
        ("http://api.example.com", True),
        ("https://api.example.com", False),
        ("http://127.0.0.1:9000", False),
        ("http://localhost:9000", False),
    ],
)
def test_plain_http_to_a_remote_upstream_is_a_warning(
    write_config: WriteConfig, upstream: str, warned: bool
) -> None:
    warnings = load_settings(write_config(base_config(upstream=upstream))).warnings
    assert bool(warnings) == warned
    if warned:
        assert warnings == [
            "connectors.crm.upstream: plain http:// to api.example.com sends the injected "
            "credential unencrypted"
        ]


def test_route_is_stored_without_trailing_slash(write_config: WriteConfig) -> None:
    settings = load_settings(write_config(base_config(route="/crm/"))).settings
    assert settings.connectors["crm"].route == "/crm"


def test_problems_never_contain_secret_values(write_config: WriteConfig) -> None:
    config = {
        "listen": {"port": CANARY},
        "clients": {"api_keys": [{"nested": CANARY}]},
        "connectors": {
            "crm": {
                "route": "/crm",
                "upstream": f"https://user:{CANARY}@api.example.com",
                "auth": {"type": "static", "token": f"{CANARY}\r\n"},
            }
        },
    }
    problems = problems_of(write_config(config))
    assert len(problems) == 4
    assert not any(CANARY in problem for problem in problems)


def test_yaml_syntax_error_names_the_place_not_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(f"connectors:\n  crm: {{token: {CANARY}\n")
    problems = problems_of(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: line 3, column 1:")
    assert CANARY not in problems[0]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("- a\n- b\n", "the top level must be a mapping of keys to values"),
        (None, "cannot read (No such file or directory)"),
    ],
)
def test_unusable_files(tmp_path: Path, content: str | None, problem: str) -> None:
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    assert problems_of(path) == [f"{path}: {problem}"]


def test_empty_file_is_a_valid_config_with_no_connectors(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path).settings.connectors == {}


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("${TP_UNSET:-}", None), ("t", "t")])
def test_empty_admin_token_means_none(
    write_config: WriteConfig, raw: str, expected: str | None
) -> None:
    config = {**base_config(), "admin": {"token": raw}}
    token = load_settings(write_config(config)).settings.admin.token
    assert (token.get_secret_value() if token else None) == expected


def oauth2(**fields: Any) -> dict[str, Any]:
    auth = {
        "type": "oauth2",
        "grant": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "id",
        "client_secret": "secret",
    }
    auth.update(fields)
    return {k: v for k, v in auth.items() if v is not None}


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        (
            oauth2(client_secret=None),
            "connectors.crm.auth: grant 'client_credentials' with client_auth "
            "'client_secret_basic' needs client_secret",
        ),
        (
            oauth2(grant="password"),
            "connectors.crm.auth: grant 'password' with client_auth 'client_secret_basic' needs "
            "password, username",
        ),
        (
            oauth2(grant="refresh_token", client_auth="none", client_secret=None),
            "connectors.crm.auth: grant 'refresh_token' with client_auth 'none' needs "
            "refresh_token",
        ),
        (
            oauth2(grant="authorization_code"),
            "connectors.crm.auth: grant 'authorization_code' with client_auth "
            "'client_secret_basic' needs authorization_url",
        ),
        (
            oauth2(grant="authorization_code", authorization_url="http://idp.example.com/a"),
            "connectors.crm.auth.authorization_url: must use https:// (plain http:// only to a "
            "loopback address)",
        ),
        (
            oauth2(
                grant="authorization_code",
                authorization_url="https://idp.example.com/a",
                redirect_uri="http://egress.example.com/_proxy/oauth/crm/callback",
            ),
            "connectors.crm.auth.redirect_uri: must use https:// (plain http:// only to a "
            "loopback address)",
        ),
        (
            oauth2(
                grant="authorization_code",
                authorization_url="https://idp.example.com/a",
                auth_params={"state": "fixed", "prompt": "consent"},
            ),
            "connectors.crm.auth.auth_params: must not set state: the flow sets them",
        ),
        (
            oauth2(
                grant="authorization_code",
                authorization_url="https://idp.example.com/a",
                auth_params_map={"redirect_uri": "to"},
            ),
            "connectors.crm.auth.auth_params_map: must not set redirect_uri: the flow sets them",
        ),
        (
            oauth2(
                grant="authorization_code",
                authorization_url="https://idp.example.com/a",
                userinfo_fields=["account..email"],
            ),
            "connectors.crm.auth.userinfo_fields.0: cannot read the path 'account..email' at "
            "character 8",
        ),
        (
            oauth2(auth_params={"prompt": "consent"}, pkce=False),
            "connectors.crm.auth: auth_params, pkce: not used by grant 'client_credentials'",
        ),
        (
            oauth2(token_url="http://idp.example.com/token"),
            "connectors.crm.auth.token_url: must use https:// (plain http:// only to a loopback "
            "address)",
        ),
        (
            oauth2(refresh_url="ftp://idp.example.com/token"),
            "connectors.crm.auth.refresh_url: must be an absolute https:// URL",
        ),
        (
            oauth2(extra_params={"client_secret": "x", "grant_type": "y"}),
            "connectors.crm.auth.extra_params: must not set client_secret, grant_type: use the "
            "dedicated fields",
        ),
        (
            oauth2(extra_params="[1, 2]"),
            "connectors.crm.auth.extra_params: must be a mapping, or a JSON object as a string",
        ),
        (oauth2(reauth_on=[401, 500]), "connectors.crm.auth.reauth_on: may list only 4xx statuses"),
        (
            oauth2(client_auth="private_key_jwt"),
            "connectors.crm.auth: grant 'client_credentials' with client_auth 'private_key_jwt' "
            "needs private_key",
        ),
        (
            oauth2(client_auth="private_key_jwt", private_key="not a key"),
            "connectors.crm.auth.private_key: must be an unencrypted PEM private key",
        ),
        (
            oauth2(client_auth="tls_client_auth", client_secret=None),
            "connectors.crm.auth.client_auth: tls_client_auth needs a client certificate in "
            "auth.tls or tls (RFC 8705)",
        ),
    ],
)
def test_oauth2_rules(write_config: WriteConfig, auth: dict[str, Any], problem: str) -> None:
    assert problems_of(write_config(base_config(auth=auth))) == [problem]


def test_password_grant_is_accepted_with_a_warning(write_config: WriteConfig) -> None:
    auth = oauth2(grant="password", username="u", password="p", token_url="http://127.0.0.1:1/t")
    loaded = load_settings(write_config(base_config(auth=auth)))
    assert loaded.warnings == [
        "connectors.crm.auth.grant: the password grant is deprecated by RFC 9700 §2.4; prefer "
        "client credentials where the provider offers them"
    ]


def custom(**fields: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {"type": "custom", "token_request": {"url": "https://idp.example/t"}}
    auth.update(fields)
    return auth


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        (
            custom(token_request={"url": "https://idp.example/t", "body": {"p": "{{pasword}}"}}),
            "connectors.crm.auth.token_request: unknown placeholder(s) {{pasword}}; known: "
            "access_token, client_id, client_secret, password, refresh_token, username",
        ),
        (
            custom(
                token_request={"url": "https://idp.example/t", "method": "GET", "body": {"a": "1"}}
            ),
            "connectors.crm.auth.token_request: a GET request cannot have a body: put the fields "
            "in 'query'",
        ),
        (
            custom(token_request={"url": "https://idp.example/t", "body": {"a": {"b": "1"}}}),
            "connectors.crm.auth.token_request: a form body must be flat: nested values need "
            "body_format: json",
        ),
        (
            custom(token_request={"url": "https://idp.example/t", "body": "{not json"}),
            "connectors.crm.auth.token_request.body: must be a mapping, or a JSON object as a "
            "string",
        ),
        (
            custom(access_token_path="$.items[*].token"),
            "connectors.crm.auth.access_token_path: cannot read the path '$.items[*].token' at "
            "character 8",
        ),
        (
            custom(refresh_request={"url": "https://idp.example/r", "expires_path": "a..b"}),
            "connectors.crm.auth.refresh_request.expires_path: cannot read the path 'a..b' at "
            "character 2",
        ),
        (
            custom(expires_type="minutes"),
            "connectors.crm.auth.expires_type: Input should be 'seconds', 'milliseconds', "
            "'datetime', 'epoch_seconds' or 'epoch_milliseconds'",
        ),
        (
            custom(token_request={"url": "http://idp.example/t"}),
            "connectors.crm.auth.token_request.url: must use https:// (plain http:// only to a "
            "loopback address)",
        ),
    ],
)
def test_custom_rules(write_config: WriteConfig, auth: dict[str, Any], problem: str) -> None:
    assert problems_of(write_config(base_config(auth=auth))) == [problem]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("private_key", "file:/nonexistent/key.pem"),
        ("client_secret", "${TOKENPROXY_TEST_UNSET_VARIABLE}"),
        ("token_url", "${TOKENPROXY_TEST_UNSET_VARIABLE}"),
    ],
)
def test_a_value_that_cannot_be_resolved_is_reported_once(
    write_config: WriteConfig, field: str, value: str
) -> None:
    auth = oauth2(client_auth="private_key_jwt", private_key="placeholder")
    auth[field] = value
    problems = problems_of(write_config(base_config(auth=auth)))
    assert len(problems) == 1
    assert problems[0].startswith(f"connectors.crm.auth.{field}: ")


CONTRACT_EXAMPLE = """
listen: {host: 127.0.0.1, port: 8080}
server:
  shutdown_timeout: 30
admin:  {prefix: /_proxy, token: admin-secret}
clients:
  allow_cidrs: [127.0.0.0/8]
  api_keys: {billing: client-key}
cache:  {backend: memory}
state_dir: /var/lib/tokenproxy
connectors:
  crm:
    route: /crm
    hosts: [api.crm.example.com]
    upstream: https://api.crm.example.com/v2
    timeouts: {connect: 10, read: 60}
    tls: {server_name: api.internal, system_ca: false, insecure_skip_verify: false}
    http_proxy: http://corp-proxy:3128
    warmup: false
    auth:
      type: oauth2
      grant: client_credentials
      token_url: https://idp.example.com/oauth/token
      client_id: crm-client
      client_secret: crm-secret
      client_auth: client_secret_post
      scopes: [crm.read, crm.write]
      audience: https://api.crm.example.com
      refresh_margin: 60
      default_ttl: 300
      reauth_on: [401]
"""


def test_a_config_written_from_the_contract_loads(tmp_path: Path) -> None:
    """The contract's example, for every feature this version has (cache included)."""
    path = tmp_path / "contract.yaml"
    path.write_text(CONTRACT_EXAMPLE)
    plan = check_config(path)
    settings = plan.settings
    assert settings.cache.backend == "memory" and settings.state_dir == "/var/lib/tokenproxy"
    assert [key.get_secret_value() for key in settings.clients.keys] == ["client-key"]
    assert list(plan.connectors) == ["crm"]


@pytest.mark.parametrize(
    ("cache", "problem"),
    [
        ({"backend": "redis"}, "cache: url is required with backend redis"),
        ({"backend": "redis", "url": "http://x"}, "cache: url must start with redis://"),
        (
            {"backend": "redis", "url": "redis://127.0.0.1", "tls": {"ca_file": "ca.pem"}},
            "cache: tls needs a rediss:// url",
        ),
        (
            {"backend": "redis", "url": "rediss://h", "tls": {"cert_file": "c.pem"}},
            "cache.tls: give cert_file and key_file together",
        ),
    ],
)
def test_cache_settings_are_checked(
    write_config: WriteConfig, cache: dict[str, Any], problem: str
) -> None:
    (found,) = problems_of(write_config({"cache": cache}))
    assert found.startswith(problem), found


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"tls_intercept": {"ca_cert_file": "x"}}, "tls_intercept.ca_key_file: Field required"),
        (
            {"tls_intercept": {"ca_cert_file": "/nonexistent", "ca_key_file": "/nonexistent"}},
            "tls_intercept.ca_cert_file: cannot read the CA",
        ),
        ({"cache": {"backend": "memcached"}}, "cache.backend: Input should be 'memory' or"),
    ],
)
def test_documented_keys_of_later_versions_say_so(
    write_config: WriteConfig, config: dict[str, Any], problem: str
) -> None:
    (found,) = problems_of(write_config(config))
    assert found.startswith(problem)


def test_the_contracts_redis_cache_and_device_grant_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract's other `cache` form, and `grant: device_code` with `issuer` only."""
    from proxy.secrets.envelope import KEY_ENV, generate_key

    monkeypatch.setenv(KEY_ENV, generate_key())
    text = CONTRACT_EXAMPLE.replace(
        "cache:  {backend: memory}",
        'cache:  {backend: redis, url: redis://127.0.0.1:6379/0, key_prefix: "tokenproxy:"}',
    )
    text = text.replace(
        "      grant: client_credentials\n      token_url: https://idp.example.com/oauth/token\n",
        "      grant: device_code\n      issuer: https://idp.example.com\n",
    )
    path = tmp_path / "contract.yaml"
    path.write_text(text)
    settings = check_config(path).settings
    assert settings.cache.backend == "redis" and settings.cache.key_prefix == "tokenproxy:"
    auth = settings.connectors["crm"].auth
    assert (auth.grant, auth.issuer) == ("device_code", "https://idp.example.com")  # type: ignore[union-attr]
