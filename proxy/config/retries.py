"""``retries`` of a connector: which upstream answers and failures are worth sending again.

``attempts`` counts the sends after the first, as Kong's ``retries`` and Envoy's
``num_retries`` do; the replay after a re-authentication is one of them. Without a
``retries`` block a request still gets one: the re-auth replay, or a second try of an
idempotent request whose connection failed before any answer (a pooled connection the
upstream had just closed, a refused connect).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from proxy.config.base import Check, Rules, block

IDEMPOTENT_METHODS = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
"""RFC 9110 §9.2.2 (TRACE is never forwarded)."""

# A refusal (400, 403, 404...) is the same the second time; these say "not now".
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


def _statuses(value: list[int]) -> list[int]:
    wrong = sorted(s for s in value if not (s in _RETRYABLE_CLIENT_ERRORS or 500 <= s <= 599))
    if wrong:
        shown = ", ".join(map(str, wrong))
        raise ValueError(
            f"may list 5xx, 408, 425 and 429 only ({shown}: the upstream would refuse "
            "the same request again)"
        )
    return value


def _methods(value: list[str]) -> list[str]:
    upper = [method.upper() for method in value]
    if "CONNECT" in upper or "TRACE" in upper:
        raise ValueError("CONNECT and TRACE are never forwarded")
    if any(not method.isalpha() for method in upper):
        raise ValueError("must be HTTP method names such as GET or PUT")
    return upper


@block
class RetriesConfig:
    """Sends of one request after the first, and what earns one."""

    # Sends after the first, the re-auth replay included.
    attempts: Annotated[int, Rules(ge=0, le=10)] = 2
    # Upstream statuses answered by another try (after Retry-After).
    on: Annotated[list[int], Check(_statuses)] = dataclasses.field(
        default_factory=lambda: [429, 502, 503, 504]
    )
    # Methods that may be sent again (a POST only if listed).
    methods: Annotated[list[str], Check(_methods)] = dataclasses.field(
        default_factory=lambda: list(IDEMPOTENT_METHODS)
    )
    # The longest wait before a try; a longer Retry-After goes to the client.
    max_delay: Annotated[float, Rules(ge=0)] = 10
