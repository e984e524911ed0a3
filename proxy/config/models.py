"""The config file (README) as typed, strict models. The YAML keys are the field names.

Only per-field rules live here; rules that relate several fields (duplicate routes, a public
listener without client restrictions) are checked by :mod:`proxy.config.checks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ByteSize,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from proxy.config.auth import BasicAuthConfig, NoneAuthConfig, StaticAuthConfig
from proxy.config.base import HostName, OriginValue, RoutePrefix, StrictModel
from proxy.config.custom import CustomAuthConfig
from proxy.config.oauth2 import OAuth2AuthConfig
from proxy.config.per_client import lay_over_auth
from proxy.config.retries import RetriesConfig
from proxy.config.tls import TLSConfig

ENV_PREFIX = "TOKENPROXY_"

# A new auth type is a model plus its entry here; nothing else in the config layer changes.
AuthConfig = Annotated[
    NoneAuthConfig | StaticAuthConfig | BasicAuthConfig | OAuth2AuthConfig | CustomAuthConfig,
    Field(discriminator="type"),
]
AUTH_TYPES = ("none", "static", "basic", "oauth2", "custom")


class TLSInterceptConfig(StrictModel):
    """The local CA that ``CONNECT host:443`` tunnels are terminated with (``ca init``)."""

    ca_cert_file: str = Field(description="the CA certificate (PEM), for clients to trust")
    ca_key_file: str = Field(description="its key, sealed with the master key (enc:v1:)")


class ListenConfig(StrictModel):
    host: str = Field("127.0.0.1", min_length=1, description="loopback by default: a sidecar")
    port: int = Field(8080, ge=0, le=65535)
    allowed_hosts: list[HostName] = Field(
        default_factory=list,
        description="further names clients may send as Host (else 421: DNS rebinding)",
    )
    allowed_origins: list[OriginValue] = Field(
        default_factory=list, description="browser origins whose requests are served"
    )


class AdminConfig(StrictModel):
    prefix: RoutePrefix = Field("/_proxy", description="path prefix of the admin endpoints")
    token: SecretStr | None = Field(None, description="when set, admin POSTs need it as Bearer")

    @field_validator("token")
    @classmethod
    def _empty_means_unset(cls, value: SecretStr | None) -> SecretStr | None:
        # `token: ${ADMIN_TOKEN:-}` with the variable unset: no token, not an empty one.
        return value if value is not None and value.get_secret_value() else None

    @field_validator("prefix")
    @classmethod
    def _not_root(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be '/': the admin endpoints need a prefix of their own")
        return value


def _named_keys(value: Any) -> Any:
    """``api_keys`` as a list names its clients by position (``0``, ``1``...): errors then
    point at ``clients.api_keys.0`` either way."""
    return (
        {str(index): key for index, key in enumerate(value)} if isinstance(value, list) else value
    )


class ClientsConfig(StrictModel):
    """Who may use the proxy. Empty lists mean no restriction of that kind."""

    allow_cidrs: list[IPvAnyNetwork] = Field(
        default_factory=list, description="socket peer addresses allowed to connect"
    )
    api_keys: Annotated[dict[str, SecretStr], BeforeValidator(_named_keys)] = Field(
        default_factory=dict,
        description="keys sent as 'Proxy-Authorization: Bearer <key>'; a map names the clients",
    )

    @field_validator("api_keys")
    @classmethod
    def _one_name_per_key(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """A key names one client: under two names, the second's credentials would never
        be used. Names are of the connector-name kind (they appear in field paths)."""
        for name in value:
            if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
                raise ValueError(f"client name {name!r} may hold only letters, digits, - and _")
        seen: dict[str, str] = {}
        for name, key in value.items():
            other = seen.setdefault(key.get_secret_value(), name)
            if other != name:
                raise ValueError(f"{other} and {name} have the same key; each needs its own")
        return value

    @property
    def restricted(self) -> bool:
        return bool(self.allow_cidrs or self.api_keys)

    @property
    def keys(self) -> list[SecretStr]:
        return list(self.api_keys.values())


class RedisTLSConfig(StrictModel):
    """TLS to Redis (``rediss://``): a custom CA, and a client certificate if it wants one."""

    ca_file: str | None = Field(None, description="CA bundle (PEM) that signed Redis's certificate")
    cert_file: str | None = Field(None, description="client certificate (PEM)")
    key_file: str | None = Field(None, description="client private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> RedisTLSConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("give cert_file and key_file together")
        return self


class CacheConfig(StrictModel):
    """Where token state is shared. ``memory``: by the processes of one machine, durable in
    ``state_dir``; ``redis``: by every replica, with ``state_dir`` as the local fallback."""

    backend: Literal["memory", "redis"] = "memory"
    url: SecretStr | None = Field(
        None, description="redis://[user:password@]host:port/db, or rediss:// for TLS"
    )
    key_prefix: str = Field("tokenproxy:", description="prefix of every key in Redis")
    tls: RedisTLSConfig | None = None
    lease_ttl: float = Field(
        10.0,
        gt=0,
        le=300,
        description="seconds a replica that died while fetching blocks the others (renewed "
        "every third of it while the holder lives)",
    )

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> CacheConfig:
        if self.backend != "redis":
            return self
        if self.url is None:
            raise ValueError("url is required with backend redis")
        scheme = self.url.get_secret_value().partition("://")[0].lower()
        if scheme not in ("redis", "rediss"):
            raise ValueError("url must start with redis:// or rediss://")
        if self.tls is not None and scheme != "rediss":
            raise ValueError("tls needs a rediss:// url")
        return self


class ServerConfig(StrictModel):
    """Limits of the listening side, chosen after nginx, Envoy and HAProxy (docs/design.md)."""

    keepalive_timeout: float = Field(
        30, gt=0, description="idle keep-alive and request-header deadline (slowloris), seconds"
    )
    max_line_size: int = Field(8190, ge=1024, description="longest request line or header line")
    max_field_size: int = Field(8190, ge=1024, description="longest header field")
    max_headers: int = Field(100, ge=8, description="most header fields in one request")
    shutdown_timeout: float = Field(30, ge=0, description="grace for in-flight requests on stop")
    drain_delay: float = Field(
        0,
        ge=0,
        description="on SIGTERM, seconds of /ready 503 while still serving, before the "
        "listener closes (a load balancer without a preStop hook notices meanwhile)",
    )
    access_log: bool = Field(True, description="one line per request, without query strings")
    body_timeout: float = Field(
        60, gt=0, description="idle seconds between reads of a request body -> 408 (nginx: 60)"
    )
    max_body: ByteSize = Field(
        ByteSize(100 * 1024 * 1024), ge=0, description="largest request body -> 413"
    )
    max_header_bytes: ByteSize = Field(
        ByteSize(64 * 1024), ge=1024, description="all request headers together -> 431"
    )


class TimeoutsConfig(StrictModel):
    connect: float = Field(10, gt=0, description="seconds to connect (and to get a pooled one)")
    read: float = Field(60, gt=0, description="seconds to wait for each read from the upstream")


class ConnectorConfig(StrictModel):
    """One upstream API and the credential the proxy injects for it."""

    route: RoutePrefix | None = Field(None, description="path prefix; longest prefix wins")
    hosts: list[HostName] = Field(default_factory=list, description="select by Host / absolute URI")
    upstream: str = Field(description="base URL: /<route>/x/y -> <upstream>/x/y")
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    tls: TLSConfig | None = Field(None, description="TLS to the upstream and token endpoint")
    http_proxy: SecretStr | None = Field(
        None, description="egress proxy (http://[user:pass@]host:port) for upstream and token"
    )
    warmup: bool = Field(False, description="fetch a token at start; /ready waits for it")
    allow_browser: bool = Field(
        False, description="serve cross-site browser requests (they carry the credential)"
    )
    max_body: ByteSize | None = Field(None, ge=0, description="overrides server.max_body")
    retries: RetriesConfig | None = Field(
        None, description="send again after these statuses or failures (default: connects only)"
    )
    auth: AuthConfig | None = Field(
        None, description="the credential; optional with per_client (others then get 403)"
    )
    per_client: dict[str, AuthConfig] = Field(
        default_factory=dict,
        description="client name (clients.api_keys) -> auth fields laid over 'auth'",
    )

    @model_validator(mode="before")
    @classmethod
    def _per_client_over_auth(cls, data: Any) -> Any:
        """Each ``per_client`` entry made whole from the connector's ``auth``
        (:mod:`proxy.config.per_client`)."""
        return lay_over_auth(data)

    @model_validator(mode="after")
    def _some_auth(self) -> ConnectorConfig:
        if self.auth is None and not self.per_client:
            raise ValueError("needs 'auth' (or 'per_client' credentials for its clients)")
        return self

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

    @field_validator("http_proxy")
    @classmethod
    def _proxy_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        try:
            url = URL(value.get_secret_value())
        except ValueError:
            raise ValueError("is not a valid URL") from None
        if url.scheme != "http" or not url.host or url.path not in ("", "/"):
            raise ValueError("must be http://[user:password@]host:port")
        return value

    @field_validator("upstream")
    @classmethod
    def _upstream_url(cls, value: str) -> str:
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


class Settings(BaseSettings):
    """The whole configuration. Environment variables ``TOKENPROXY_A__B`` override ``a.b``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    listen: ListenConfig = Field(default_factory=ListenConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    tls_intercept: TLSInterceptConfig | None = Field(
        None, description="terminate CONNECT host:443 for connectors' hosts with the local CA"
    )
    state_dir: str | None = Field(
        None, description="durable local state; default $TOKENPROXY_STATE_DIR or .tokenproxy/"
    )
    connectors: dict[str, ConnectorConfig] = Field(default_factory=dict)

    @field_validator("connectors")
    @classmethod
    def _connector_names(cls, value: dict[str, ConnectorConfig]) -> dict[str, ConnectorConfig]:
        for name in value:
            if not name or not all(ch.isalnum() or ch in "-_" for ch in name):
                raise ValueError(f"connector name {name!r} may hold only letters, digits, - and _")
        return value
