"""Who authorized an interactive grant: the provider's userinfo endpoint (OpenID Connect
Core §5.3), asked once with the new access token, for display only (the callback page,
``/connectors``). Its failure never fails the authorization: the account is then unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from proxy.config.paths import JsonPath, parse_path
from proxy.errors import TokenEndpointError
from proxy.tokens.endpoint import TokenRequest, TokenSender, json_payload
from proxy.tokens.oauth2 import OAuth2Grant

logger = logging.getLogger(__name__)

DEFAULT_ACCOUNT_FIELDS = ("email", "preferred_username", "name", "sub")
"""Without ``userinfo_fields``: the first of these the userinfo answer has names the account."""
_DEFAULT_PATHS = tuple(parse_path(name) for name in DEFAULT_ACCOUNT_FIELDS)
_MAX_SHOWN = 200


async def who_authorized(
    grant: OAuth2Grant, send: TokenSender, access_token: str | None
) -> str | None:
    """The account the userinfo endpoint names for ``access_token``, or None."""
    url = grant.userinfo_endpoint()
    if url is None or access_token is None:
        return None
    request = TokenRequest(
        url,
        method="GET",
        headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
    )
    try:
        payload = json_payload(await send(request))
    except TokenEndpointError as exc:
        logger.warning(
            "connector %s: the userinfo endpoint failed (%s); the authorized account is not known",
            grant.connector,
            exc.message.replace("token endpoint", "userinfo endpoint"),
        )
        return None
    return account_of(payload, grant.config.userinfo_fields)


def account_of(payload: Mapping[str, Any], fields: Sequence[JsonPath]) -> str | None:
    """The ``fields`` found in ``payload``, joined; without ``fields``, the first of
    :data:`DEFAULT_ACCOUNT_FIELDS` present."""
    values = [_shown(path.find(payload)) for path in fields or _DEFAULT_PATHS]
    present = [value for value in values if value]
    if not present:
        return None
    return (", ".join(present) if fields else present[0])[:_MAX_SHOWN]


def _shown(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)
