"""A scripted browser for oidc-provider's development interactions (tests/oidc/server.mjs).

``consent()`` opens an authorization URL, signs in on the provider's login form (any login,
any password), approves its consent form, and hands back the URL the provider redirects the
browser to, without requesting it: ``<redirect_uri>?code=...&state=...&iss=...``, or with
``error=...`` when the provider refuses. ``deny=True`` cancels on the first form instead
(``/interaction/<uid>/abort``), which comes back as ``error=access_denied``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import aiohttp
from yarl import URL

MAX_STEPS = 20
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass
class Form:
    """One ``<form>``: where it goes, how, and the fields a browser would send."""

    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)


class PageParser(HTMLParser):
    """The forms (with their ``<input>`` fields), the links and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._form: Form | None = None
        self._hidden = 0  # inside <style>, <script> or <head>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag in {"style", "script", "head"}:
            self._hidden += 1
        elif tag == "form":
            self._form = Form(attributes.get("action", ""), attributes.get("method", "get").lower())
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and attributes.get("name"):
            name = attributes["name"]
            self._form.fields[name] = attributes.get("value", "")
            self._form.types[name] = attributes.get("type", "text").lower()
        elif tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag in {"style", "script", "head"}:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def parse(body: str) -> PageParser:
    page = PageParser()
    page.feed(body)
    page.close()
    return page


def excerpt(body: str, limit: int = 300) -> str:
    """The start of a page's visible text (all of it, if it is no HTML)."""
    text = " ".join(" ".join(parse(body).text).split()) if "<" in body else body
    return " ".join(text.split())[:limit]


def fill(form: Form, login: str) -> dict[str, str]:
    """The fields a person would send: ``login`` as the account id, any password."""
    fields = dict(form.fields)
    for name, kind in form.types.items():
        if kind == "password":
            fields[name] = "any password"
        elif kind in {"text", "email"} and name in {"login", "username", "email"}:
            fields[name] = login
    return fields


async def consent(
    authorization_url: str,
    redirect_uri: str,
    *,
    login: str = "alice",
    deny: bool = False,
    timeout: float = 10.0,  # noqa: ASYNC109 - bounds the whole walk, not one await
) -> str:
    """Play the browser through oidc-provider's login and consent forms.

    Follows redirects by hand until one points at ``redirect_uri`` and returns that URL
    unrequested (with ``code``, ``state`` and ``iss``, or ``error`` and ``error_description``:
    the caller checks which). On each interaction page the form is submitted with ``login``
    as the account id (any password), or, with ``deny``, the page's cancel link is followed.
    At most ``MAX_STEPS`` requests within ``timeout`` seconds; AssertionError, with the last
    page's status and an excerpt, if no redirect to ``redirect_uri`` comes of them.
    """
    method, url, data = "GET", authorization_url, None
    status, body, last = 0, "", f"GET {authorization_url}"

    def stuck(why: str) -> AssertionError:
        return AssertionError(f"{why}; last {status} from {last}: {excerpt(body)}")

    jar = aiohttp.CookieJar(unsafe=True)  # 127.0.0.1: cookies for an IP address host
    try:
        async with (
            asyncio.timeout(timeout),
            aiohttp.ClientSession(cookie_jar=jar, trust_env=False) as session,
        ):
            for _ in range(MAX_STEPS):
                last = f"{method} {url}"
                async with session.request(
                    method, url, data=data, allow_redirects=False
                ) as response:
                    status, body = response.status, await response.text()
                    location = response.headers.get("Location")
                if status in REDIRECTS:
                    if not location:
                        raise stuck("a redirect without a Location")
                    target = urljoin(url, location)
                    if target.startswith(redirect_uri):
                        return target
                    method, url, data = "GET", target, None
                    continue
                if status != 200:
                    raise stuck("not a page")
                page = parse(body)
                if deny:
                    aborts = [link for link in page.links if link.rstrip("/").endswith("/abort")]
                    if not aborts:
                        raise stuck("no cancel link")
                    method, url, data = "GET", urljoin(url, aborts[0]), None
                    continue
                if not page.forms:
                    raise stuck("no form")
                form = page.forms[0]
                fields = fill(form, login)
                url = urljoin(url, form.action or url)
                if form.method == "post":
                    method, data = "POST", fields
                else:
                    method, url, data = "GET", str(URL(url).update_query(fields)), None
    except TimeoutError as timed_out:
        raise stuck(f"no redirect to {redirect_uri} within {timeout} s") from timed_out
    raise stuck(f"no redirect to {redirect_uri} in {MAX_STEPS} steps")
