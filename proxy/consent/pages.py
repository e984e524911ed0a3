"""The small HTML pages a person sees at the end of a browser authorization.

Every value shown is escaped; none is ever a token. Served with a policy that forbids
scripts, framing and referrers (the callback's address holds the code).
"""

from __future__ import annotations

import html

from aiohttp import web

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tokenproxy: {title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}
h1{{font-size:1.4em;color:{colour}}}code{{background:#f3f3f3;padding:0 .2em}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def page(
    title: str, paragraphs: list[str], *, status: int, ok: bool, link: str | None = None
) -> web.Response:
    """``paragraphs`` are plain text, escaped here; ``link`` ends the page as a link."""
    body = "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
    if link is not None:
        href = html.escape(link, quote=True)
        body += f'<p><a href="{href}">{href}</a></p>'
    text = _PAGE.format(title=html.escape(title), body=body, colour="#176f2c" if ok else "#a11d1d")
    return web.Response(status=status, text=text, content_type="text/html", headers=PAGE_HEADERS)


def authorized_page(connector: str, account: str | None, refresh_token: bool) -> web.Response:
    who = f"as {account}" if account else "(the provider did not say as which account)"
    lines = [f"The connector {connector} is now authorized {who}."]
    if refresh_token:
        lines.append("It renews its token by itself from now on. You can close this window.")
    else:
        lines.append(
            "The provider gave no refresh token, so the connector must be authorized again "
            "when this access token expires. Ask for offline access (for example the scope "
            "offline_access, or auth_params access_type: offline and prompt: consent)."
        )
    return page("Authorized", lines, status=200, ok=True)


def failed_page(connector: str, reason: str, start_url: str, *, status: int) -> web.Response:
    return page(
        "Not authorized",
        [
            f"The connector {connector} was not authorized: {reason}.",
            "Nothing was changed. To try again, open:",
        ],
        status=status,
        ok=False,
        link=start_url,
    )
