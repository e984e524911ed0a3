"""The route table: longest prefix on a segment boundary, and hosts."""

from __future__ import annotations

import pytest

from proxy.http.routing import Match, RouteTable

TABLE = RouteTable(
    routes=[("/api", "api"), ("/api/v2", "api-v2"), ("/crm", "crm")],
    hosts=[("api.crm.example.com", "crm-host"), ("erp.example.com:8443", "erp")],
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api", Match("api", "")),
        ("/api/", Match("api", "/")),
        ("/api/x", Match("api", "/x")),
        ("/api/v2", Match("api-v2", "")),
        ("/api/v2/x", Match("api-v2", "/x")),
        ("/api/v22/x", Match("api", "/v22/x")),
        ("/crm/x", Match("crm", "/x")),
        ("/crmx", None),
        ("/apix/y", None),
        ("/API/x", None),
        ("/", None),
    ],
)
def test_longest_prefix_on_segment_boundary(path: str, expected: Match[str] | None) -> None:
    assert TABLE.match_path(path) == expected


def test_root_route_catches_everything_not_routed_elsewhere() -> None:
    table = RouteTable(routes=[("", "default"), ("/crm", "crm")])
    assert table.match_path("/crm/x") == Match("crm", "/x")
    assert table.match_path("/other") == Match("default", "/other")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("api.crm.example.com", "crm-host"),
        ("API.CRM.example.com", "crm-host"),
        ("api.crm.example.com:80", "crm-host"),
        ("erp.example.com:8443", "erp"),
        ("erp.example.com", None),
        ("erp.example.com:9999", None),
        ("127.0.0.1:8080", None),
        (None, None),
    ],
)
def test_hosts_match_with_or_without_port(host: str | None, expected: str | None) -> None:
    match = TABLE.match_host(host, "/x")
    assert (match.target if match else None) == expected
    if match:
        assert match.rest == "/x"
