"""The operator status page, ``GET {admin.prefix}/``: one HTML page, no front-end build.

Each connector's state in colour, time to expiry, when its token was obtained and from where,
the last error code, failures and back-off, who authorized an interactive grant (with the
start link while it needs authorization), the token store's health, and request and error
rates from the metrics. It refreshes itself every few seconds (``<meta refresh>``: no script
at all, under a CSP that forbids them). It shows names, states and numbers only, every one
escaped: never a token, a secret, or a query string.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.consent.pages import PAGE_HEADERS
from proxy.metrics.registry import Metrics

REFRESH_SECONDS = 5
_COLOURS = {
    "valid": "#1b7f3b",
    "static": "#1b7f3b",
    "pass-through": "#5b6470",
    "expiring": "#b7791f",
    "none": "#5b6470",
    "failing": "#c53030",
    "needs_authorization": "#c53030",
    "needs_refresh_token": "#c53030",
}
_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em;color:#1f2328}
h1{font-size:1.3em;margin:0 0 .2em}p.meta{color:#5b6470;margin:0 0 1em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.45em .6em;
border-bottom:1px solid #e3e6ea;vertical-align:top}th{background:#f5f7f9;font-weight:600}
.state{display:inline-block;color:#fff;border-radius:.8em;padding:0 .6em;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#5b6470}
"""


@dataclass
class Rates:
    """Requests and errors per second per connector, between two looks at the counters."""

    _last: tuple[float, dict[str, tuple[int, int]]] | None = field(default=None)

    def update(self, metrics: Metrics) -> dict[str, tuple[float, float]]:
        now = time.monotonic()
        totals: dict[str, tuple[int, int]] = {}
        for (connector, status), count in metrics.requests.items():
            requests, errors = totals.get(connector, (0, 0))
            failed = count if int(status) >= 500 else 0
            totals[connector] = (requests + count, errors + failed)
        previous, self._last = self._last, (now, totals)
        if previous is None or now - previous[0] < 0.5:
            return {}
        seconds = now - previous[0]
        rates = {}
        for connector, (requests, errors) in totals.items():
            before = previous[1].get(connector, (0, 0))
            rates[connector] = ((requests - before[0]) / seconds, (errors - before[1]) / seconds)
        return rates


def render_status_page(
    described: Mapping[str, Mapping[str, Any]],
    store: Mapping[str, str] | None,
    rates: Mapping[str, tuple[float, float]],
) -> web.Response:
    """``described``: each connector's ``/connectors`` entry; ``rates``: (requests, 5xx) per
    second, empty until the page has been seen twice."""
    rows = "".join(
        _row(name, info, rates.get(name))
        + "".join(  # a per_client credential: a row of its own under its connector
            _row(f"{name} / {client}", {**state, "route": info.get("route")}, None)
            for client, state in info.get("clients", {}).items()
        )
        for name, info in described.items()
    )
    store_text = "no token store" if store is None else f"token store: {store['backend']}, "
    if store is not None:
        store_text += store["health"]
    body = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
        f"<title>tokenproxy status</title><style>{_STYLE}</style></head><body>"
        f"<h1>tokenproxy</h1><p class=meta>{_e(store_text)} · {len(described)} connector(s)"
        f" · refreshes every {REFRESH_SECONDS} s</p>"
        "<table><thead><tr><th>connector</th><th>state</th><th>token</th><th>last error</th>"
        "<th class=num>fetches</th><th class=num>failures</th><th class=num>req/s</th>"
        "<th class=num>5xx/s</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></body></html>"
    )
    return web.Response(text=body, content_type="text/html", headers=PAGE_HEADERS)


def _row(name: str, info: Mapping[str, Any], rate: tuple[float, float] | None) -> str:
    state = str(info.get("state", "none"))
    colour = _COLOURS.get(state, "#5b6470")
    badge = f'<span class=state style="background:{colour}">{_e(state.replace("_", " "))}</span>'
    if info.get("retry_in") is not None:
        badge += f"<div class=muted>next try in {int(info['retry_in'])} s</div>"
    if state == "needs_authorization" and info.get("start_url"):
        link = _e(info["start_url"])
        badge += f'<div><a href="{link}">authorize</a></div>'
    token = []
    if info.get("expires_in") is not None:
        token.append(f"expires in {_duration(info['expires_in'])}")
    if info.get("obtained_ago") is not None:
        token.append(f"obtained {_duration(info['obtained_ago'])} ago")
    if info.get("source"):
        token.append(f"from {info['source']}")
    if info.get("account"):
        token.append(f"as {info['account']}")
    if info.get("store") == "degraded":
        token.append("store degraded")
    auth = info.get("auth", {}).get("type", "")
    where = info.get("route") or ", ".join(info.get("hosts") or ())
    requests, errors = ("-", "-") if rate is None else (f"{rate[0]:.1f}", f"{rate[1]:.1f}")
    return (
        f"<tr><td><b>{_e(name)}</b><div class=muted>{_e(auth)} · {_e(where)}</div></td>"
        f"<td>{badge}</td><td>{_e(', '.join(token)) or '<span class=muted>-</span>'}</td>"
        f"<td>{_e(info.get('last_error') or '-')}</td>"
        f"<td class=num>{_e(info.get('fetches', '-'))}</td>"
        f"<td class=num>{_e(info.get('failures', '-'))}</td>"
        f"<td class=num>{requests}</td><td class=num>{errors}</td></tr>"
    )


def _duration(seconds: Any) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
