"""The operator status page in a real headless Chromium: it renders, shows the state of each
connector of a running proxy (valid, failing with its error, needing authorization with its
link, static), refreshes itself, and never shows a token. A screenshot is written to
``test-artifacts/status-page.png``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from proxy.status_page import render_status_page
from tests.conftest import STATIC_TOKEN, StartProxy, connector, http_status, oauth2_connector
from tests.fakes import FakeIdP, RecordingUpstream

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


async def test_the_status_page_in_a_real_browser(
    chromium: Any,
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    idp: FakeIdP,
    client: aiohttp.ClientSession,
) -> None:
    from selenium.webdriver.common.by import By

    failing = {**oauth2_connector(upstream.url, idp.url, client_id="nobody"), "route": "/failing"}
    consent = {
        **oauth2_connector(
            upstream.url, idp.url, grant="authorization_code",
            authorization_url=f"{idp.url}/authorize",
        ),
        "route": "/consent",
    }  # fmt: skip
    crm = {**oauth2_connector(upstream.url, idp.url), "route": "/crm"}
    proxy = await start_proxy(
        {
            "connectors": {
                "crm": crm,
                "failing": failing,
                "consent": consent,
                "static": connector(upstream.url, route="/static"),
            }
        }
    )
    for path in ("/crm/x", "/crm/y", "/static/x", "/failing/x", "/consent/x"):
        await http_status(client, proxy, path)
    page_url = f"{proxy.url}/_proxy/"

    def look() -> tuple[str, str, dict[str, str]]:
        chromium.get(page_url)
        rows = chromium.find_elements(By.CSS_SELECTOR, "tbody tr")
        states = {
            row.find_element(By.TAG_NAME, "b").text: row.find_element(By.CLASS_NAME, "state").text
            for row in rows
        }
        return chromium.page_source, chromium.find_element(By.TAG_NAME, "body").text, states

    await asyncio.to_thread(look)  # a first look, so that the second has request rates
    await asyncio.sleep(0.6)
    source, text, states = await asyncio.to_thread(look)
    assert states == {
        "crm": "valid",
        "failing": "failing",
        "consent": "needs authorization",
        "static": "static",
    }
    assert "invalid_client" in text and "expires in 4 min" in text
    assert 'http-equiv="refresh"' in source
    link = await asyncio.to_thread(
        lambda: chromium.find_element(By.LINK_TEXT, "authorize").get_attribute("href")
    )
    assert link == f"{proxy.url}/_proxy/oauth/consent/start"
    assert not any(token in source for token in idp.issued)
    assert "demo-secret" not in source and STATIC_TOKEN not in source
    ARTIFACTS.mkdir(exist_ok=True)
    await asyncio.to_thread(chromium.save_screenshot, str(ARTIFACTS / "status-page.png"))
    assert (ARTIFACTS / "status-page.png").stat().st_size > 1000


def test_each_per_client_credential_gets_a_row_under_its_connector() -> None:
    described = {
        "crm": {
            "state": "valid",
            "auth": {"type": "oauth2"},
            "route": "/crm",
            "clients": {"billing<x>": {"state": "failing", "auth": {"type": "oauth2"}}},
        }
    }
    page = render_status_page(described, None, {}).text or ""
    assert page.count("<tr><td>") == 2
    assert "<b>crm / billing&lt;x&gt;</b>" in page and "failing" in page
