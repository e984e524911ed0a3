"""Rules that relate several fields of a valid :class:`Settings`, checked after validation.

:func:`cross_check` returns errors (the config is refused) and warnings (it runs, loudly).
Every message names the field and states the rule, never a secret value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from proxy.config.base import is_loopback_host
from proxy.config.models import Settings
from proxy.config.oauth2 import TokenLifecycleConfig
from proxy.config.per_client import token_owner


@dataclass
class CheckResult:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def subject_connector_problems(settings: Settings) -> list[str]:
    """Each ``subject_connector`` of a token exchange names a connector that issues tokens
    (``oauth2`` or ``custom``), not its own, and following them never comes back."""
    problems: list[str] = []
    links: dict[str, str] = {}  # connector -> its own auth's subject connector
    for name, connector in settings.connectors.items():
        # A client's entry may name its own connector: that is the connector's token.
        for client, path, auth in connector.auth_blocks(f"connectors.{name}"):
            subject = getattr(auth, "subject_connector", None)
            if subject is None:
                continue
            other = settings.connectors.get(subject)
            own = client is None
            if own and subject == name:
                problems.append(f"{path}.subject_connector: names its own connector")
            elif other is None:
                problems.append(f"{path}.subject_connector: no connector named {subject!r}")
            elif not isinstance(other.auth, TokenLifecycleConfig):
                problems.append(
                    f"{path}.subject_connector: connector {subject!r} issues no tokens (its "
                    "auth must be of type oauth2 or custom)"
                )
            elif own:
                links[name] = subject
    for name in links:
        chain = [name]
        while (after := links.get(chain[-1])) is not None and after not in chain:
            chain.append(after)
        if after == name:
            cycle = " -> ".join([*chain, name])
            problems.append(f"connectors.{name}.auth.subject_connector: a cycle ({cycle})")
    return problems


def _route_covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def cross_check(settings: Settings) -> CheckResult:
    result = CheckResult()
    result.errors.extend(subject_connector_problems(settings))
    if not is_loopback_host(settings.listen.host) and not settings.clients.restricted:
        result.errors.append(
            f"listen.host: {settings.listen.host!r} is not a loopback address; a public "
            "listener needs 'clients.allow_cidrs' or 'clients.api_keys' to restrict who may "
            "use the credentials it injects"
        )

    routes: dict[str, str] = {}
    hosts: dict[str, str] = {}
    token_files: dict[str, str] = {}
    admin_prefix = settings.admin.prefix
    for name, connector in settings.connectors.items():
        where = f"connectors.{name}"
        if connector.route is None and not connector.hosts:
            result.errors.append(f"{where}: needs a 'route', 'hosts', or both")
        if connector.route is not None:
            shown = connector.route or "/"
            if connector.route in routes:
                result.errors.append(
                    f"{where}.route: {shown!r} is already the route of connector "
                    f"{routes[connector.route]!r}"
                )
            else:
                routes[connector.route] = name
            if connector.route and _route_covers(admin_prefix, connector.route):
                result.errors.append(
                    f"{where}.route: {shown!r} lies under the admin prefix {admin_prefix!r}"
                )
        for host in connector.hosts:
            if host in hosts:
                result.errors.append(
                    f"{where}.hosts: {host!r} is already a host of connector {hosts[host]!r}"
                )
            else:
                hosts[host] = name
        for client, path, auth in connector.auth_blocks(where):
            token_tls = getattr(auth, "tls", None) or connector.tls
            if getattr(auth, "client_auth", None) == "tls_client_auth" and not (
                token_tls and token_tls.has_client_certificate
            ):
                result.errors.append(
                    f"{path}.client_auth: tls_client_auth needs a client certificate in "
                    "auth.tls or tls (RFC 8705)"
                )
            grant = getattr(auth, "grant", None)
            inherited = client is not None and grant == getattr(connector.auth, "grant", None)
            if grant == "password" and not inherited:  # said once, where it was written
                result.warnings.append(
                    f"{path}.grant: the password grant is deprecated by RFC 9700 §2.4; "
                    "prefer client credentials where the provider offers them"
                )
        for tls, path in (
            (connector.tls, f"{where}.tls"),
            (getattr(connector.auth, "tls", None), f"{where}.auth.tls"),
        ):
            if tls is not None and tls.insecure_skip_verify:
                result.warnings.append(
                    f"{path}.insecure_skip_verify: certificates are NOT verified; anyone on the "
                    "path can read the credentials"
                )
        for client, path, auth in connector.auth_blocks(where):
            token_store = getattr(auth, "token_store", None)
            if token_store is None:
                continue
            resolved, owner = str(Path(token_store).resolve()), token_owner(name, client)
            if resolved in token_files:
                result.errors.append(
                    f"{path}.token_store: {token_store!r} is already the token store of "
                    f"{token_files[resolved]!r} (each would overwrite the other's refresh token)"
                )
            token_files.setdefault(resolved, owner)
        upstream = URL(connector.upstream)
        if upstream.scheme == "http" and not is_loopback_host(upstream.host or ""):
            result.warnings.append(
                f"{where}.upstream: plain http:// to {upstream.host} sends the injected "
                "credential unencrypted"
            )
    result.errors.extend(per_client_problems(settings))
    return result


def per_client_problems(settings: Settings) -> list[str]:
    """Each ``per_client`` entry names a client of ``clients.api_keys``, and obtains its
    tokens without a person (consent is per connector: one person, one account)."""
    problems = []
    clients = settings.clients.api_keys
    for name, connector in settings.connectors.items():
        for client, auth in connector.per_client.items():
            where = f"connectors.{name}.per_client.{client}"
            if client not in clients:
                known = ", ".join(sorted(clients)) or "none: clients.api_keys is not set"
                problems.append(f"{where}: no client of that name in clients.api_keys ({known})")
            if getattr(auth, "interactive", False):
                problems.append(
                    f"{where}.grant: {getattr(auth, 'grant', '')} is authorized by a person per "
                    "connector; give this client a connector of its own"
                )
    return problems
