"""The config file (README) as typed, strict models. The YAML keys are the field names.

Only per-field rules live here; rules that relate several fields (duplicate routes, a public
listener without client restrictions) are checked by :mod:`proxy.config.checks`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from typing import Annotated, Any, Literal

from yarl import URL

from proxy.config.auth import BasicAuthConfig, NoneAuthConfig, StaticAuthConfig
from proxy.config.base import (
    SHAPE,
    Before,
    ByteSize,
    Check,
    HostName,
    Like,
    OriginValue,
    RoutePrefix,
    Rules,
    SecretStr,
    Shaped,
    block,
)
from proxy.config.custom import CustomAuthConfig
from proxy.config.oauth2 import OAuth2Auth
from proxy.config.per_client import lay_over_auth
from proxy.config.retries import RetriesConfig
from proxy.config.tls import TLSConfig

ENV_PREFIX = "TOKENPROXY_"

# A new auth type is a block plus its entry here; nothing else in the config layer changes.
AuthConfig = NoneAuthConfig | StaticAuthConfig | BasicAuthConfig | OAuth2Auth | CustomAuthConfig
AUTH_TYPES = ("none", "static", "basic", "oauth2", "custom")
Auth = Annotated[AuthConfig, Rules(discriminator="type")]
"""An ``auth`` block: its ``type`` picks the block."""


@block
class TLSInterceptConfig:
    """The local CA that ``CONNECT host:443`` tunnels are terminated with (``ca init``)."""

    ca_cert_file: str  # the CA certificate (PEM), for clients to trust
    ca_key_file: str  # its key, sealed with the master key (enc:v1:)


@block
class ListenConfig:
    host: Annotated[str, Rules(min_length=1)] = "127.0.0.1"  # loopback by default: a sidecar
    port: Annotated[int, Rules(ge=0, le=65535)] = 8080
    # Further names clients may send as Host (else 421: DNS rebinding).
    allowed_hosts: list[HostName] = dataclasses.field(default_factory=list)
    # Browser origins whose requests are served.
    allowed_origins: list[OriginValue] = dataclasses.field(default_factory=list)


def _empty_means_unset(value: SecretStr | None) -> SecretStr | None:
    # `token: ${ADMIN_TOKEN:-}` with the variable unset: no token, not an empty one.
    return value if value is not None and value.get_secret_value() else None


def _not_root(value: str) -> str:
    if not value:
        raise ValueError("must not be '/': the admin endpoints need a prefix of their own")
    return value


@block
class AdminConfig:
    # The path prefix of the admin endpoints.
    prefix: Annotated[RoutePrefix, Check(_not_root)] = "/_proxy"
    # When set, admin POSTs need it as Bearer.
    token: Annotated[SecretStr | None, Check(_empty_means_unset)] = None


def _named_keys(value: Any) -> Any:
    """``api_keys`` as a list names its clients by position (``0``, ``1``...): errors then
    point at ``clients.api_keys.0`` either way."""
    return (
        {str(index): key for index, key in enumerate(value)} if isinstance(value, list) else value
    )


def _one_name_per_key(value: dict[str, SecretStr]) -> dict[str, SecretStr]:
    """A key names one client: under two names, the second's credentials would never be
    used. Names are of the connector-name kind (they appear in field paths)."""
    for name in value:
        if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise ValueError(f"client name {name!r} may hold only letters, digits, - and _")
    seen: dict[str, str] = {}
    for name, key in value.items():
        other = seen.setdefault(key.get_secret_value(), name)
        if other != name:
            raise ValueError(f"{other} and {name} have the same key; each needs its own")
    return value


@block
class ClientsConfig:
    """Who may use the proxy. Empty lists mean no restriction of that kind."""

    # Socket peer addresses allowed to connect.
    allow_cidrs: list[Annotated[IPv4Network | IPv6Network, Like("IPvAnyNetwork")]] = (
        dataclasses.field(default_factory=list)
    )
    # Keys sent as 'Proxy-Authorization: Bearer <key>'; a map names the clients.
    api_keys: Annotated[dict[str, SecretStr], Before(_named_keys), Check(_one_name_per_key)] = (
        dataclasses.field(default_factory=dict)
    )

    @property
    def restricted(self) -> bool:
        return bool(self.allow_cidrs or self.api_keys)

    @property
    def keys(self) -> list[SecretStr]:
        return list(self.api_keys.values())


@block
class RedisTLSConfig:
    """TLS to Redis (``rediss://``): a custom CA, and a client certificate if it wants one."""

    ca_file: str | None = None  # the CA bundle (PEM) that signed Redis's certificate
    cert_file: str | None = None  # client certificate (PEM)
    key_file: str | None = None  # client private key (PEM)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("give cert_file and key_file together")


@block
class CacheConfig:
    """Where token state is shared. ``memory``: by the processes of one machine, durable in
    ``state_dir``; ``redis``: by every replica, with ``state_dir`` as the local fallback."""

    backend: Literal["memory", "redis"] = "memory"
    url: SecretStr | None = None  # redis://[user:password@]host:port/db, or rediss:// (TLS)
    key_prefix: str = "tokenproxy:"  # the prefix of every key in Redis
    tls: RedisTLSConfig | None = None
    # Seconds a replica that died while fetching blocks the others (renewed every third of
    # it while the holder lives).
    lease_ttl: Annotated[float, Rules(gt=0, le=300)] = 10.0

    def __post_init__(self) -> None:
        if self.backend != "redis":
            return
        if self.url is None:
            raise ValueError("url is required with backend redis")
        scheme = self.url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError("url must start with redis:// or rediss://")
        if self.tls is not None and scheme != "rediss":
            raise ValueError("tls needs a rediss:// url")


@block
class ServerConfig:
    """Limits of the listening side, chosen after nginx, Envoy and HAProxy (docs/design.md)."""

    # The idle keep-alive and request-header deadline (slowloris), seconds.
    keepalive_timeout: Annotated[float, Rules(gt=0)] = 30
    max_line_size: Annotated[int, Rules(ge=1024)] = 8190  # longest request or header line
    max_field_size: Annotated[int, Rules(ge=1024)] = 8190  # longest header field
    max_headers: Annotated[int, Rules(ge=8)] = 100  # most header fields in one request
    shutdown_timeout: Annotated[float, Rules(ge=0)] = 30  # grace for in-flight requests on stop
    # On SIGTERM, seconds of /ready 503 while still serving, before the listener closes (a
    # load balancer without a preStop hook notices meanwhile).
    drain_delay: Annotated[float, Rules(ge=0)] = 0
    access_log: bool = True  # one line per request, without query strings
    # Idle seconds between reads of a request body -> 408 (nginx: 60).
    body_timeout: Annotated[float, Rules(gt=0)] = 60
    max_body: Annotated[ByteSize, Rules(ge=0)] = 100 * 1024 * 1024  # largest body -> 413
    # All request headers together -> 431.
    max_header_bytes: Annotated[ByteSize, Rules(ge=1024)] = 64 * 1024


@block
class TimeoutsConfig:
    connect: Annotated[float, Rules(gt=0)] = 10  # seconds to connect (or get a pooled one)
    read: Annotated[float, Rules(gt=0)] = 60  # seconds to wait for each upstream read


def _proxy_url(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    try:
        url = URL(value.get_secret_value())
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if url.scheme != "http" or not url.host or url.path not in ("", "/"):
        raise ValueError("must be http://[user:password@]host:port")
    return value


def _upstream_url(value: str) -> str:
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    if url.user is not None or url.password is not None:
        raise ValueError("must not carry credentials: put them in 'auth'")
    if url.query_string or url.fragment:
        raise ValueError("must not have a query string or fragment")
    if any(segment in (".", "..") for segment in url.raw_path.split("/")):
        raise ValueError("must not contain '.' or '..' segments")
    return value


@block
class ConnectorConfig(Shaped):
    """One upstream API and the credential the proxy injects for it."""

    @staticmethod
    def reshape(raw: Any) -> Any:
        """Each ``per_client`` entry made whole from the connector's ``auth`` first."""
        return lay_over_auth(raw)

    route: RoutePrefix | None = None  # path prefix; the longest prefix wins
    hosts: list[HostName] = dataclasses.field(default_factory=list)  # by Host / absolute URI
    upstream: Annotated[str, Check(_upstream_url)]  # base URL: /<route>/x/y -> <upstream>/x/y
    timeouts: TimeoutsConfig = dataclasses.field(default_factory=TimeoutsConfig)
    tls: TLSConfig | None = None  # TLS to the upstream and the token endpoint
    # The egress proxy (http://[user:pass@]host:port) for upstream and token endpoint.
    http_proxy: Annotated[SecretStr | None, Check(_proxy_url)] = None
    warmup: bool = False  # fetch a token at start; /ready waits for it
    allow_browser: bool = False  # serve cross-site browser requests (they carry the credential)
    max_body: Annotated[ByteSize, Rules(ge=0)] | None = None  # overrides server.max_body
    # Send again after these statuses or failures (default: connects only).
    retries: RetriesConfig | None = None
    # The credential; optional with per_client (the others then get 403).
    auth: Auth | None = None
    # Client name (clients.api_keys) -> auth fields laid over 'auth'.
    per_client: dict[str, Auth] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.auth is None and not self.per_client:
            raise ValueError("needs 'auth' (or 'per_client' credentials for its clients)")

    def auth_blocks(self, where: str) -> Iterator[tuple[str | None, str, AuthConfig]]:
        """(None or the client's name, field path, auth) of the connector's own ``auth``
        and of each ``per_client`` entry; ``where`` is the connector's own path."""
        if self.auth is not None:
            yield None, f"{where}.auth", self.auth
        for client, auth in self.per_client.items():
            yield client, f"{where}.per_client.{client}", auth

    def auth_of(self, client: str | None) -> AuthConfig | None:
        """What a request from ``client`` is sent with: its ``per_client`` entry, else the
        connector's ``auth`` (None: the connector has none for it)."""
        if client is not None and client in self.per_client:
            return self.per_client[client]
        return self.auth


Connector = Annotated[ConnectorConfig, SHAPE]
"""A connector where the config holds one (its ``per_client`` entries made whole first)."""


def _connector_names(value: dict[str, ConnectorConfig]) -> dict[str, ConnectorConfig]:
    for name in value:
        if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
            raise ValueError(f"connector name {name!r} may hold only letters, digits, - and _")
    return value


@block
class Settings:
    """The whole configuration. Environment variables ``TOKENPROXY_A__B`` override ``a.b``
    (:mod:`proxy.config.loader`)."""

    listen: ListenConfig = dataclasses.field(default_factory=ListenConfig)
    admin: AdminConfig = dataclasses.field(default_factory=AdminConfig)
    clients: ClientsConfig = dataclasses.field(default_factory=ClientsConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    # Terminate CONNECT host:443 for connectors' hosts with the local CA.
    tls_intercept: TLSInterceptConfig | None = None
    # Durable local state; default $TOKENPROXY_STATE_DIR or .tokenproxy/ beside the file.
    state_dir: str | None = None
    connectors: Annotated[dict[str, Connector], Check(_connector_names)] = dataclasses.field(
        default_factory=dict
    )
