"""How a ``per_client`` entry is made from its connector's ``auth`` (before validation).

An entry is the connector's ``auth`` with the entry's fields laid over it, except:

- an entry of another ``type`` stands alone (nothing is taken over);
- what belongs to one owner is never taken over: a ``refresh_token`` seed (single use: two
  owners redeeming it would make a provider with reuse detection revoke both) and a
  ``token_store`` file (each owner would overwrite the other's refresh token);
- an entry with another ``grant`` does not take over what only the connector's grant reads
  (``authorization_url``, ``device_authorization_url``, ``assertion``, ``grant_type``...).

Errors of an entry in a field it took over are the connector's own: the loader reports them
once, at ``auth`` (:mod:`proxy.config.loader`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.config.oauth2 import FIELDS_OF_GRANT

OWNED_BY_ONE = frozenset({"refresh_token", "token_store"})


def taken_over(base: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``base`` (the connector's ``auth``) that ``entry`` takes over."""
    if entry.get("type", base.get("type")) != base.get("type"):
        return {}
    kept = {name: value for name, value in base.items() if name not in OWNED_BY_ONE}
    grant = entry.get("grant", base.get("grant"))
    if grant != base.get("grant"):
        kept = {
            name: value
            for name, value in kept.items()
            if name != "grant_type" and grant in FIELDS_OF_GRANT.get(name, (grant,))
        }
    return kept


def lay_over_auth(connector: Any) -> Any:
    """A connector's raw config with each ``per_client`` entry made whole."""
    if not isinstance(connector, dict) or not isinstance(connector.get("per_client"), dict):
        return connector
    base = connector.get("auth")
    base = base if isinstance(base, dict) else {}
    entries = {
        name: {**taken_over(base, entry), **entry} if isinstance(entry, dict) else entry
        for name, entry in connector["per_client"].items()
    }
    return {**connector, "per_client": entries}


def token_owner(connector: str, client: str | None) -> str:
    """The name a token is kept and logged under: the connector's, or ``connector/client``
    for a ``per_client`` entry (connector names hold no ``/``, so no two owners clash)."""
    return connector if client is None else f"{connector}/{client}"
