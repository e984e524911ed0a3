"""The ``tokenproxy`` command line (README, "Command line"). The only module that exits the process.

Exit codes: 0 success; 1 ``check`` found problems; 2 usage error or a config ``run`` refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import getpass
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from yarl import URL

from proxy.arguments import build_parser, config_path
from proxy.config.handoff import LoadedConfig, load_apart, load_apart_async
from proxy.config.models import AuthConfig, ConnectorConfig, Settings
from proxy.errors import ConfigError, ProxyError
from proxy.logs import configure_logging
from proxy.secrets.envelope import EnvelopeError, MasterKeys, generate_key, key_id

if TYPE_CHECKING:
    from proxy.auth.base import Credential
    from proxy.runtime import Plan

T = TypeVar("T")


def _load(path: Path, overrides: dict[str, Any] | None = None) -> LoadedConfig | ConfigError:
    """The config validated in this process (the commands other than ``run``)."""
    from proxy.config.loader import load_settings

    try:
        return load_settings(path, overrides)
    except ConfigError as exc:
        return exc


def _load_apart(path: Path, overrides: dict[str, Any] | None) -> LoadedConfig | ConfigError:
    """The config validated by another process: a server never holds the validator."""
    try:
        return load_apart(path, overrides)
    except ConfigError as exc:
        return exc


def _print_problems(path: Path, error: ConfigError) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for problem in error.problems:
        print(f"  {problem}", file=sys.stderr)


def _run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run on uvloop when it is installed (the ``speed`` extra), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def _build(settings: Settings) -> Plan | ConfigError:
    """The build step's pure phase: every TLS file, key and grant the config names."""
    from proxy.runtime import prepare

    try:
        return prepare(settings)
    except ConfigError as exc:
        return exc


async def _open_and_close(plan: Plan) -> None:
    from proxy.runtime import open_runtime

    async with open_runtime(plan):
        pass


def _cmd_check(args: argparse.Namespace) -> int:
    """Load, then build the runtime and discard it: no network I/O, nothing left open."""
    path = config_path(args.config)
    loaded = _load(path)
    if isinstance(loaded, ConfigError):
        _print_problems(path, loaded)
        return 1
    plan = _build(loaded.settings)
    if isinstance(plan, ConfigError):
        _print_problems(path, plan)
        return 1
    asyncio.run(_open_and_close(plan))
    for warning in loaded.warnings:
        print(f"warning: {warning}")
    connectors = loaded.settings.connectors
    print(f"{path}: valid, {len(connectors)} connector(s)")
    for name, connector in connectors.items():
        print(f"  {name}: {_summary(connector)}")
    return 0


def _summary(connector: ConnectorConfig) -> str:
    """One line: where requests come in, what credential, from where, and where they go."""
    where = [] if connector.route is None else [f"route {connector.route or '/'}"]
    where += [f"host {host}" for host in connector.hosts]
    credential = _credential_summary(connector.auth) if connector.auth else "no auth of its own"
    if connector.per_client:
        credential += f"; per client: {', '.join(connector.per_client)}"
    return f"{', '.join(where)}: {credential} -> {connector.upstream}"


def _credential_summary(auth: AuthConfig) -> str:
    credential: str = auth.type
    grant = getattr(auth, "grant", None)
    if grant is not None:
        credential += f" {grant}"
    endpoint = getattr(auth, "token_url", None) or getattr(auth, "issuer", None)
    if endpoint is None and hasattr(auth, "token_request"):
        endpoint = str(auth.token_request.url)  # a custom token request
    if endpoint:
        credential += f" from {URL(endpoint).with_query(None)}"
    if getattr(auth, "interactive", False):
        credential += " (authorized once by a person: tokenproxy authorize)"
    return credential


# Commands import the server side only when they need it: `check` stays quick.


def _cmd_run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print("tokenproxy: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1:
        from proxy.supervisor import supervise

        return supervise(args)
    from proxy.http.server import serve

    built = _load_for_run(args)
    if isinstance(built, int):
        return built
    settings, plan, load = built
    _run_async(lambda: serve(settings, plan=plan, load=load))
    return 0


def _load_for_run(
    args: argparse.Namespace, port: int | None = None, *, quiet: bool = False
) -> tuple[Settings, Plan, Callable[[], Awaitable[Settings]]] | int:
    """The settings of ``run`` (``--host``/``--port``, else ``port``: the one the parent of
    ``--workers`` reserved), their plan and what loads them again for a reload; or the exit
    status once the problems are printed. ``quiet``: no warnings (said once already)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload before serving: nothing to reload
    configure_logging(args.log_level, args.log_format)
    chosen = args.port if port is None else port
    listen = {k: v for k, v in (("host", args.host), ("port", chosen)) if v is not None}
    path = config_path(args.config)
    overrides = {"listen": listen} if listen else None
    loaded = _load_apart(path, overrides)
    if isinstance(loaded, ConfigError):
        _print_problems(path, loaded)
        return 2
    if not quiet:
        for warning in loaded.warnings:
            logging.getLogger("proxy.config").warning("%s", warning)
    plan = _build(loaded.settings)
    if isinstance(plan, ConfigError):
        _print_problems(path, plan)
        return 2

    async def load() -> Settings:
        """The file again, for a reload (raises ConfigError)."""
        again = await load_apart_async(path, overrides)
        for warning in again.warnings:
            logging.getLogger("proxy.config").warning("%s", warning)
        return again.settings

    return loaded.settings, plan, load


def listen_of_run(args: argparse.Namespace) -> tuple[str, int] | int:
    """For the parent of ``--workers``, in a child of its own: check the config as ``run``
    does (problems printed, warnings logged once) and say where to listen; or the exit
    status."""
    built = _load_for_run(args)
    if isinstance(built, int):
        return built
    listen = built[0].listen
    return listen.host, listen.port


def serve_worker(args: argparse.Namespace, port: int, metrics_dir: Path) -> int:
    """One worker of ``--workers``: its own load and build (the parent never imports them),
    on the port the parent reserved."""
    from proxy.http.server import serve
    from proxy.workers import RELOAD_ALL

    built = _load_for_run(args, port, quiet=True)
    if isinstance(built, int):
        return built
    settings, plan, load = built
    parent = os.getppid()

    def reload_all() -> None:
        if os.getppid() == parent:  # never another process's, should the parent be gone
            os.kill(parent, RELOAD_ALL)  # the parent sends SIGHUP to every worker

    _run_async(
        lambda: serve(
            settings,
            reuse_port=True,
            plan=plan,
            metrics_dir=metrics_dir,
            load=load,
            reload_all=reload_all,
        )
    )
    return 0


def mask(value: str) -> str:
    """``eyJh…(812 chars)``: enough to recognise a token, never enough to use one."""
    shown = value[:4] if len(value) >= 32 else ""
    return f"{shown}…({len(value)} chars)"


def _with_subjects(connectors: dict[str, ConnectorConfig], name: str) -> dict[str, ConnectorConfig]:
    """Connector ``name`` and every connector whose token it exchanges (``subject_connector``,
    followed through), in the config's order."""
    wanted, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in wanted or current not in connectors:
            continue
        wanted.add(current)
        for _, _, auth in connectors[current].auth_blocks(""):
            subject = getattr(auth, "subject_connector", None)
            if subject is not None:
                todo.append(subject)
    return {key: value for key, value in connectors.items() if key in wanted}


def _one_connector(args: argparse.Namespace) -> tuple[ConnectorConfig, Plan] | int:
    """Connector ``args.name`` of ``args.config`` and a plan with it alone; or the exit
    status, once the problems are printed."""
    path = config_path(args.config)
    loaded = _load(path)
    if isinstance(loaded, ConfigError):
        _print_problems(path, loaded)
        return 1
    config = loaded.settings.connectors.get(args.name)
    if config is None:
        known = ", ".join(sorted(loaded.settings.connectors)) or "none"
        print(f"tokenproxy: no connector {args.name!r} (connectors: {known})", file=sys.stderr)
        return 1
    client = getattr(args, "client", None)
    if client is not None and client not in loaded.settings.clients.api_keys:
        known = ", ".join(loaded.settings.clients.api_keys) or "none"
        print(f"tokenproxy: no client {client!r} in clients.api_keys ({known})", file=sys.stderr)
        return 1
    needed = _with_subjects(loaded.settings.connectors, args.name)
    plan = _build(dataclasses.replace(loaded.settings, connectors=needed))
    if isinstance(plan, ConfigError):
        _print_problems(path, plan)
        return 1
    return config, plan


def _cmd_token(args: argparse.Namespace) -> int:
    from proxy.runtime import open_runtime

    configure_logging("error")  # the command prints the outcome itself
    built = _one_connector(args)
    if isinstance(built, int):
        return built
    config, plan = built

    async def acquire() -> int:
        async with open_runtime(plan) as runtime:
            authenticator = runtime.connectors[args.name].authenticator_for(args.client)

            async def obtain() -> Credential | None:
                if args.fresh:
                    await authenticator.refresh()
                return await authenticator.credential()

            try:
                credential = await _saying_what_it_waits_for(
                    obtain(), f"{args.name}: waiting for {_summary(config).split(': ', 1)[1]}"
                )
            except ProxyError as exc:
                print(f"{args.name}: {exc.code}: {exc.message}", file=sys.stderr)
                return 1
            state = authenticator.describe()
        if credential is None:
            print(f"{args.name}: pass-through (auth type none): no credential")
            return 0
        where = credential.header or f"query parameter {credential.query_param}"
        auth = config.auth_of(args.client)
        prefix = getattr(auth, "token_prefix", "") if credential.header else ""
        shown = (
            mask(credential.value.removeprefix(f"{prefix} ")) if prefix else mask(credential.value)
        )
        expires = state.get("expires_in")
        source = (
            getattr(auth, "token_url", None) or getattr(auth, "issuer", None) or "the config file"
        )
        if state.get("source") == "store":
            source += ", read from the token store"
        print(f"{args.name}: {where}: {prefix + ' ' if prefix else ''}{shown}")
        print(f"  expires in: {'never' if expires is None else f'{expires}s'}")
        print(f"  source: {getattr(auth, 'type', 'none')} from {source}")
        return 0

    return asyncio.run(acquire())


async def _saying_what_it_waits_for(work: Coroutine[Any, Any, T], waiting: str) -> T:
    """Await ``work``; past a second, say on stderr what it waits for, every 5 s."""
    task = asyncio.ensure_future(work)
    delay = 1.0
    while True:
        done, _ = await asyncio.wait({task}, timeout=delay)
        if done:
            return task.result()
        print(f"{waiting}...", file=sys.stderr, flush=True)
        delay = 5.0


def _cmd_authorize(args: argparse.Namespace) -> int:
    from proxy.runtime import open_runtime

    configure_logging("warning")
    built = _one_connector(args)
    if isinstance(built, int):
        return built
    config, plan = built
    if not getattr(config.auth, "interactive", False):
        print(
            f"tokenproxy: connector {args.name!r} has no interactive grant "
            "(authorize runs grant: authorization_code or device_code)",
            file=sys.stderr,
        )
        return 1

    def say(line: str) -> None:
        print(line, flush=True)

    async def run() -> int:
        from proxy.consent.terminal import authorize_in_terminal
        from proxy.tokens.device import authorize_device
        from proxy.tokens.manager import TokenManager

        by_browser = getattr(config.auth, "grant", None) == "authorization_code"
        flow = authorize_in_terminal if by_browser else authorize_device
        async with open_runtime(plan) as runtime:
            manager = runtime.connectors[args.name].authenticator
            assert isinstance(manager, TokenManager)
            try:
                authorized = await manager.authorize(functools.partial(flow, say=say))
            except ProxyError as exc:
                print(f"{args.name}: {exc.code}: {exc.message}", file=sys.stderr)
                return 1
            where = "the token store" if runtime.store is not None else "memory only"
            who = f" as {authorized.account}" if authorized.account else ""
            if authorized.refresh_token is None:
                print(
                    f"{args.name}: authorized{who}, but the provider gave no refresh token: "
                    "authorize again when the access token expires (ask for offline access)"
                )
            else:
                print(f"{args.name}: authorized{who}; the refresh token is kept in {where}")
            return 0

    return asyncio.run(run())


def _cmd_ca(args: argparse.Namespace) -> int:
    """``ca init``: make the CA (refusing to overwrite); ``ca cert``: print its certificate."""
    configure_logging("warning")
    path = config_path(args.config)
    loaded = _load(path)
    if isinstance(loaded, ConfigError):
        _print_problems(path, loaded)
        return 1
    settings = loaded.settings
    state = Path(settings.state_dir or ".tokenproxy")
    configured = settings.tls_intercept
    cert_file = Path(configured.ca_cert_file) if configured else state / "ca.pem"
    key_file = Path(configured.ca_key_file) if configured else state / "ca.key"
    if args.action == "cert":
        try:
            sys.stdout.write(cert_file.read_text())
        except OSError as exc:
            print(f"tokenproxy: no CA at {cert_file} ({exc.strerror}): run `tokenproxy ca init`",
                  file=sys.stderr)  # fmt: skip
            return 1
        return 0
    if cert_file.exists() or key_file.exists():
        print(f"tokenproxy: {cert_file} or {key_file} exists; not overwritten", file=sys.stderr)
        return 1
    from proxy.http.intercept import make_ca
    from proxy.store.factory import store_keys

    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert, sealed_key = make_ca(store_keys(state))
    for target, data in ((key_file, sealed_key.encode()), (cert_file, cert)):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    print(f"made {cert_file} (give it to clients' trust stores) and {key_file} (sealed)")
    if configured is None:
        print(
            f"add to {path}:\ntls_intercept: {{ca_cert_file: {cert_file}, ca_key_file: {key_file}}}"
        )
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0


def _read_secret() -> str:
    """One secret from stdin: prompted without echo on a terminal, else the whole input."""
    if sys.stdin.isatty():
        return getpass.getpass("secret (not echoed): ")
    return sys.stdin.read().removesuffix("\n").removesuffix("\r")


def _cmd_encrypt(args: argparse.Namespace) -> int:
    try:
        keys = MasterKeys.from_environment()
        secret = _read_secret()
        if not secret:
            print("tokenproxy: nothing to encrypt (empty input)", file=sys.stderr)
            return 1
        print(keys.encrypt(secret))
    except EnvelopeError as exc:
        print(f"tokenproxy: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_rekey(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    try:
        keys = MasterKeys.from_environment()
        text = path.read_text(encoding="utf-8")
        rewritten, count = keys.rekey(text)
    except (EnvelopeError, OSError) as exc:
        print(f"tokenproxy: {path}: {exc}", file=sys.stderr)
        return 1
    if count:
        # Atomic: the old file stays whole until the new one is complete.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(rewritten)
        os.chmod(temporary, path.stat().st_mode & 0o7777)
        os.replace(temporary, path)
    assert keys.current is not None
    print(f"{path}: {count} value(s) re-encrypted under key {key_id(keys.current)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    configure_logging(args.log_level)
    _run_async(lambda: run_demo(port=args.port))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "check": _cmd_check,
    "token": _cmd_token,
    "authorize": _cmd_authorize,
    "ca": _cmd_ca,
    "keygen": _cmd_keygen,
    "encrypt": _cmd_encrypt,
    "rekey": _cmd_rekey,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit status."""
    try:
        return COMMANDS[args.command](args)
    except OSError as exc:  # e.g. the port is taken
        print(f"tokenproxy: {exc.strerror or exc}", file=sys.stderr)
        return 2
