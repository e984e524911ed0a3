"""``tokenproxy demo``: a working proxy with nothing to configure.

It starts a demo identity provider, a demo echo upstream and the proxy on loopback, with one
connector per auth type that can run without outside services (the browser consent of the
authorization-code grant too: the demo provider approves at once), and prints ``curl`` lines
that show the injected credentials arriving at the upstream.
"""

from __future__ import annotations

import asyncio
import tempfile

from aiohttp import web

from proxy.config.loader import validate
from proxy.config.models import Settings
from proxy.demo.echo import create_echo_server
from proxy.demo.idp import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USERNAME,
    DemoIdentityProvider,
)
from proxy.http.server import ProxyServer, stop_on_signals

DEMO_STATIC_TOKEN = "demo-static-token"


def demo_settings(echo_url: str, idp_url: str, port: int, state_dir: str) -> Settings:
    return validate(
        Settings,
        {
            "listen": {"host": "127.0.0.1", "port": port},
            "state_dir": state_dir,
            "connectors": {
                "echo": {
                    "route": "/echo",
                    "hosts": ["echo.demo.localhost"],
                    "upstream": f"{echo_url}/v1",
                    "auth": {"type": "static", "token": DEMO_STATIC_TOKEN},
                },
                "echo-basic": {
                    "route": "/echo-basic",
                    "upstream": echo_url,
                    "auth": {"type": "basic", "username": "demo", "password": "demo-password"},
                },
                "echo-oauth": {
                    "route": "/echo-oauth",
                    "upstream": echo_url,
                    "warmup": True,
                    "auth": {
                        "type": "oauth2",
                        "grant": "client_credentials",
                        "token_url": f"{idp_url}/token",
                        "client_id": DEMO_CLIENT_ID,
                        "client_secret": DEMO_CLIENT_SECRET,
                        "scopes": ["demo.read", "demo.write"],
                    },
                },
                "echo-password": {
                    "route": "/echo-password",
                    "upstream": echo_url,
                    "auth": {
                        "type": "oauth2",
                        "grant": "password",
                        "token_url": f"{idp_url}/token",
                        "client_id": DEMO_CLIENT_ID,
                        "client_secret": DEMO_CLIENT_SECRET,
                        "client_auth": "client_secret_post",
                        "username": DEMO_USERNAME,
                        "password": DEMO_PASSWORD,
                    },
                },
                "echo-consent": {
                    "route": "/echo-consent",
                    "upstream": echo_url,
                    "auth": {
                        "type": "oauth2",
                        "grant": "authorization_code",
                        "authorization_url": f"{idp_url}/authorize",
                        "token_url": f"{idp_url}/token",
                        "userinfo_url": f"{idp_url}/userinfo",
                        "client_id": DEMO_CLIENT_ID,
                        "client_secret": DEMO_CLIENT_SECRET,
                        "scopes": ["demo.read", "offline_access"],
                    },
                },
            },
        },
    )


def curl_lines(port: int) -> list[str]:
    base = f"http://127.0.0.1:{port}"
    return [
        f"curl -s '{base}/echo/hello?name=world'",
        f"curl -s -X POST --data 'ping' {base}/echo-basic/items",
        f"curl -s {base}/echo-oauth/orders",
        f"curl -s {base}/echo-password/profile",
        f"curl -s -x {base} http://echo.demo.localhost/hello",
        f"curl -s {base}/echo-consent/me   # 503 until you open, once, in a browser:",
        f"  {base}/_proxy/oauth/echo-consent/start",
        f"curl -s {base}/_proxy/connectors",
        f"curl -si {base}/nowhere",
    ]


async def run_demo(port: int = 8080, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    stop_on_signals(stop)

    runners = []
    for server in (create_echo_server(), web.Server(DemoIdentityProvider(), access_log=None)):
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
    echo_url, idp_url = (f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners)
    # The demo's tokens (the browser consent's refresh token) live as long as the demo.
    state = tempfile.TemporaryDirectory(prefix="tokenproxy-demo-")
    proxy = ProxyServer(demo_settings(echo_url, idp_url, port, state.name))
    try:
        await proxy.start()
        assert proxy.port is not None
        lines = "\n".join(f"  {line}" for line in curl_lines(proxy.port))
        print(
            f"tokenproxy demo: proxy on http://127.0.0.1:{proxy.port}, "
            f"echo upstream on {echo_url}, identity provider on {idp_url}\n"
            f"Try:\n{lines}\nCtrl-C stops everything.",
            flush=True,
        )
        await stop.wait()
    finally:
        await proxy.stop()
        for runner in runners:
            await runner.cleanup()
        state.cleanup()
