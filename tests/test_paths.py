"""Paths into JSON answers: dotted and JSONPath forms, and what they refuse."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config.paths import parse_path

DOCUMENT: dict[str, Any] = {
    "access_token": "top",
    "data": {"auth": {"token": "nested"}},
    "items": [{"value": "first"}, {"value": "second"}],
    "odd key": {"a.b": "dotted-name"},
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("access_token", "top"),
        ("data.auth.token", "nested"),
        ("items.0.value", "first"),
        ("items.1.value", "second"),
        ("$.access_token", "top"),
        ("$.data.auth.token", "nested"),
        ("$.items[0].value", "first"),
        ("$.items[-1].value", "second"),
        ("$['odd key']['a.b']", "dotted-name"),
        ('$["data"].auth["token"]', "nested"),
        ("data.missing", None),
        ("items.5.value", None),
        ("$.items[9]", None),
        ("access_token.deeper", None),
        ("$.data[0]", None),
    ],
)
def test_find(path: str, expected: Any) -> None:
    assert parse_path(path).find(DOCUMENT) == expected


@pytest.mark.parametrize(
    "path", ["", " data", "$", "$.", "data..token", "$.items[*]", "$..token", "a[", "$.a[?(@.x)]"]
)
def test_malformed_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_path(path)
