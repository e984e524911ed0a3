"""The command line's arguments, and nothing else: the supervising parent of ``run
--workers N`` parses them without importing the server stack (:mod:`proxy.supervisor`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from proxy import __version__

LOG_FORMAT_ENV = "TOKENPROXY_LOG_FORMAT"

DEFAULT_CONFIG = Path("config/tokenproxy.yaml")
LOG_LEVELS = ("debug", "info", "warning", "error")


def config_path(value: str | None) -> Path:
    return Path(value or os.environ.get("TOKENPROXY_CONFIG") or DEFAULT_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenproxy",
        description="Authenticating egress proxy: injects credentials into upstream requests.",
    )
    parser.add_argument("--version", action="version", version=f"tokenproxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_help = "config file (default: $TOKENPROXY_CONFIG, else config/tokenproxy.yaml)"
    run = commands.add_parser("run", help="serve")
    run.add_argument("-c", "--config", help=config_help)
    run.add_argument("--host", help="listen address (overrides listen.host)")
    run.add_argument("--port", type=int, help="listen port (overrides listen.port)")
    run.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default 1)"
    )
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    run.add_argument(
        "--log-format",
        choices=("json", "text"),
        help=f"default: ${LOG_FORMAT_ENV}, else text on a terminal and JSON otherwise",
    )

    check = commands.add_parser("check", help="validate the config and exit 0 (valid) or 1")
    check.add_argument("-c", "--config", help=config_help)

    token = commands.add_parser(
        "token", help="acquire one token for a connector and show it masked"
    )
    token.add_argument("name", help="connector name")
    token.add_argument("-c", "--config", help=config_help)
    token.add_argument(
        "--fresh",
        action="store_true",
        help="ask the token endpoint for a new token (through the store's lease) even if "
        "a valid one is stored",
    )
    token.add_argument(
        "--client", help="the token of this calling client (a per_client entry of the connector)"
    )

    authorize = commands.add_parser(
        "authorize",
        help="run a connector's interactive grant once (authorization_code, device_code)",
    )
    authorize.add_argument("name", help="connector name")
    authorize.add_argument("-c", "--config", help=config_help)

    ca = commands.add_parser("ca", help="the local CA of tls_intercept")
    ca.add_argument("action", choices=("init", "cert"), help="make it / print its certificate")
    ca.add_argument("-c", "--config", help=config_help)

    commands.add_parser("keygen", help="print a new master key")
    commands.add_parser(
        "encrypt", help="read one secret on stdin, print it as enc:v1:... (master key from env)"
    )
    rekey = commands.add_parser(
        "rekey", help="re-encrypt every enc:v1 value of a config file under the current key"
    )
    rekey.add_argument("-c", "--config", help=config_help)

    demo = commands.add_parser("demo", help="run the proxy with a demo upstream on loopback")
    demo.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    demo.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    return parser
