"""Parsing and validating the raw request target."""

from __future__ import annotations

import pytest

from proxy.errors import BadRequestError
from proxy.http.target import Target, parse_target


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/api/x", Target("/api/x", None)),
        ("/api/x?", Target("/api/x", "")),
        ("/api/x?a=%2F&b=+&c=%20&d=%zz&e=", Target("/api/x", "a=%2F&b=+&c=%20&d=%zz&e=")),
        ("/api/x#frag", Target("/api/x", None)),
        ("/api/x?q=1#frag", Target("/api/x", "q=1")),
        ("/api/x/", Target("/api/x/", None)),
        ("/api/a%20b/%41", Target("/api/a%20b/%41", None)),
        ("/api/x;v=1", Target("/api/x;v=1", None)),
        ("/api/...", Target("/api/...", None)),
        ("/api/.hidden/..x", Target("/api/.hidden/..x", None)),
        ("http://API.example.com/x?q=1", Target("/x", "q=1", "api.example.com")),
        ("http://api.example.com:8080", Target("/", None, "api.example.com:8080")),
        ("https://api.example.com/x", Target("/x", None, "api.example.com")),
    ],
)
def test_valid_targets(raw: str, expected: Target) -> None:
    assert parse_target(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "/api/../admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E%2Fadmin",
        "/api/.%2e/admin",
        "/api/..%2Fx",
        "/api/..%5Cx",
        "/api/..\\x",
        "/api/x;/../../y",
        "/api/..;x/y",
        "/api/%00",
        "//api/x",
        "/api//x",
        "/api/x/./y",
        "/api/.",
        "/api/x%zz",
        "/api/x%2",
        "http://api.example.com/../x",
        "http://user@api.example.com/x",
        "http:///x",
        "ftp://api.example.com/x",
        "api.example.com:443",
        "*",
    ],
)
def test_dangerous_targets_are_bad_requests(raw: str) -> None:
    with pytest.raises(BadRequestError):
        parse_target(raw)
