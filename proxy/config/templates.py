"""``{{name}}`` placeholders in custom token requests, filled with credentials and tokens.

Secrets stay in their own (secret) config fields; request templates only name them, so a
request body can be shown or logged without the password in it. Placeholders are checked at
config load; an unknown name is a config error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]+)\s*\}\}")
NAMES = frozenset(
    {"client_id", "client_secret", "username", "password", "refresh_token", "access_token"}
)


def placeholders(value: Any) -> set[str]:
    """Every placeholder name used anywhere in ``value`` (strings, lists, mappings)."""
    if isinstance(value, str):
        return set(PLACEHOLDER.findall(value))
    if isinstance(value, dict):
        return set().union(*(placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(placeholders(v) for v in value)) if value else set()
    return set()


def render(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` with every placeholder replaced; an unset value renders as ``""``."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: values.get(match.group(1), ""), value)
    if isinstance(value, dict):
        return {key: render(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, values) for item in value]
    return value
