"""Log redaction, enforced once for every logger, handler and traceback."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.config.loader import validate
from proxy.secrets.redaction import REDACTOR, secret_values
from tests.test_config import base_config  # a valid config shape

SECRET = "sec_CANARY_redaction_4242"
TOKEN = "tok_CANARY_live_token_9191"


@pytest.fixture(autouse=True)
def _known_secrets() -> None:
    REDACTOR.add([SECRET])
    REDACTOR.hold("test-connector", [TOKEN])


@pytest.mark.parametrize("logger_name", ["proxy.anything", "aiohttp.client", "some.library", ""])
def test_known_values_are_masked_in_any_logger(
    caplog: pytest.LogCaptureFixture, logger_name: str
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger(logger_name).info("s=%s t=%s", SECRET, TOKEN)
    assert caplog.records[-1].getMessage() == "s=*** t=***"


def test_tracebacks_with_request_headers_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's exception reprs hold the request headers, the injected token included."""
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer unknown-token-value-1"}))
    info = aiohttp.RequestInfo(URL("https://api.example.com/x?key=unknown-key"), "GET", headers)
    try:
        raise aiohttp.ClientResponseError(info, (), status=500, message="boom")
    except aiohttp.ClientResponseError as exc:
        logging.getLogger("some.reporter").exception("request failed: %r", exc.request_info)
    text = caplog.text
    assert "unknown-token-value-1" not in text and "unknown-key" not in text
    assert "Traceback" in text and "ClientResponseError" in text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("'Authorization': 'Bearer abc.def.ghi'", "'Authorization': '***'"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: ***"),
        ("sent Bearer eyJhbGciOiJIUzI1NiJ9.x.y upstream", "sent Bearer *** upstream"),
        ("GET /x?access_token=abc123&b=2", "GET /x?access_token=***&b=2"),
        ("nothing to hide here", "nothing to hide here"),
    ],
)
def test_credential_shapes_are_masked(line: str, expected: str) -> None:
    assert REDACTOR.scrub(line) == expected


def test_previous_token_generation_stays_masked() -> None:
    REDACTOR.hold("rotating", ["tok_generation_one_aaaa"])
    REDACTOR.hold("rotating", ["tok_generation_two_bbbb"])
    REDACTOR.hold("rotating", ["tok_generation_three_cc"])
    text = "tok_generation_one_aaaa tok_generation_two_bbbb tok_generation_three_cc"
    # The current and the previous generation are masked; older ones are long expired.
    assert REDACTOR.scrub(text) == "tok_generation_one_aaaa *** ***"


def test_every_secret_field_of_a_config_is_found() -> None:
    from proxy.config.models import Settings

    config = base_config(
        auth={
            "type": "custom",
            "password": "pw-value",
            "token_request": {
                "url": "https://idp.example/t",
                "headers": {"X-Key": "header-value"},
                "body_format": "json",
                "body": {"nested": {"literal": "body-value"}},
            },
        },
        http_proxy="http://u:proxy-pass@proxy.example:3128",
        tls={"key_password": "key-pass", "cert_pem": "c", "key_pem": "k"},
    )
    config["admin"] = {"token": "admin-value"}
    config["clients"] = {"api_keys": ["client-key"]}
    values = set(secret_values(validate(Settings, config)))
    assert values >= {
        "pw-value",
        "header-value",
        "body-value",
        "http://u:proxy-pass@proxy.example:3128",
        "proxy-pass",
        "key-pass",
        "admin-value",
        "client-key",
    }


def test_aiohttp_server_records_lose_the_exception_text(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever path logs a parser error, the quoted request bytes never reach a handler."""
    from aiohttp.http_exceptions import BadHttpMessage

    try:
        raise BadHttpMessage("Invalid HTTP header: b'X-A: SECRETcanary\\x00b'")
    except BadHttpMessage:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", "1.2.3.4")
    assert "SECRETcanary" not in caplog.text
    assert "Error handling request from 1.2.3.4: BadHttpMessage" in caplog.text
