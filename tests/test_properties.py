"""Property-based checks (hypothesis) of the parts hostile input reaches: request targets,
header filtering, token answers and expiry arithmetic. Bounded: a few hundred examples each,
no deadline flakiness on a shared machine."""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import unquote

from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.errors import BadRequestError, TokenEndpointError
from proxy.http.headers import HOP_BY_HOP, REQUEST_DROPPED, filter_headers
from proxy.http.target import parse_target
from proxy.tokens.model import Phase, Token, parse_expires_in, validate_token

bounded = settings(max_examples=300, deadline=None)

PATH_PIECES = st.sampled_from(
    [
        "a",
        "b",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2f",
        "%5c",
        "%00",
        "%",
        "%zz",
        "/",
        "//",
        "\\",
        ";",
        "?",
        "#",
        "x=1",
        "&",
        " ",
        "\t",
        "é",
    ]
)


@bounded
@given(st.lists(PATH_PIECES, max_size=12).map("".join))
def test_a_target_that_passes_can_never_climb_out_of_its_route(tail: str) -> None:
    try:
        target = parse_target("/api/" + tail)
    except BadRequestError:
        return
    for segment in target.path.split("/")[1:]:
        decoded = unquote(segment)
        assert decoded not in (".", "..")
        assert "/" not in decoded and "\\" not in decoded and "\x00" not in decoded
    assert "#" not in target.path and (target.query is None or "#" not in target.query)


HEADER_NAMES = st.sampled_from(
    [
        *sorted(HOP_BY_HOP),
        "Authorization",
        "X-Forwarded-For",
        "X_Forwarded_For",
        "Host",
        "Accept",
        "X-Custom",
        "x-custom",
        "Content-Type",
        "Cookie",
    ]
)


@bounded
@given(
    st.lists(
        st.tuples(HEADER_NAMES, st.text(string.ascii_letters + ", -", max_size=20)), max_size=12
    ),
    st.lists(HEADER_NAMES, max_size=3),
)
def test_filtered_headers_never_hold_a_hop_by_hop_or_nominated_name(
    headers: list[tuple[str, str]], nominated: list[str]
) -> None:
    raw: CIMultiDict[str] = CIMultiDict(headers)
    if nominated:
        raw.add("Connection", ", ".join(nominated))
    kept = filter_headers(CIMultiDictProxy(raw), REQUEST_DROPPED)
    names = {name.lower() for name in kept}
    assert not names & REQUEST_DROPPED
    assert not names & {n.lower() for n in nominated}
    assert not any("_" in name for name in names)


JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@bounded
@given(JSON_VALUES)
def test_expires_in_is_a_floored_non_negative_number_or_a_clear_error(value: Any) -> None:
    try:
        seconds = parse_expires_in(value)
    except TokenEndpointError:
        return
    assert seconds is None or (seconds >= 0 and seconds == int(seconds))


@bounded
@given(st.text(max_size=40) | st.binary(max_size=10).map(lambda b: b.decode("latin-1")))
def test_a_token_that_passes_can_go_in_a_header(value: str) -> None:
    try:
        token = validate_token(value, "access_token")
    except TokenEndpointError:
        return
    assert token and all(0x21 <= ord(ch) <= 0x7E for ch in token)


@bounded
@given(
    st.floats(0, 200_000),
    st.floats(0, 10_000),
    st.lists(st.floats(0, 300_000), min_size=2, max_size=8),
)
def test_a_tokens_phase_only_moves_forward_in_time(
    lifetime: float, margin: float, moments: list[float]
) -> None:
    token = Token.issued("t", 0.0, lifetime, margin, "token endpoint")
    order = list(Phase)
    phases = [token.phase(now) for now in sorted(moments)]
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases)
    assert token.phase(lifetime) is Phase.EXPIRED
    assert token.margin <= lifetime / 2
