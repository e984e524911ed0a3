"""Hot reload: a new config becomes a new *generation* (runtime and gateway) beside the
running one, and takes over at once; the old one finishes its requests, then closes.

Guarantees:

- **Nothing changes unless all of it can.** The file is loaded, validated and built
  (certificate and key files read again, so rotated ones apply) before anything is touched;
  any problem refuses the reload, says every problem, and the old config keeps serving.
- **Tokens survive.** A connector whose token-defining settings did not change
  (:func:`~proxy.store.records.token_material`) takes over the old one's token, refresh
  token and back-off: the identity provider is not asked again.
- **In-flight requests finish on the config they started with**, for up to
  ``server.shutdown_timeout``; then the old generation's sessions and store are closed.
- What only a restart can change (the listen address) is kept, with a warning.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from proxy.config.models import Settings
from proxy.config.per_client import token_owner
from proxy.http.gateway import Gateway
from proxy.http.tunnel import NewConnection
from proxy.runtime import Plan, Runtime, open_runtime
from proxy.tokens.manager import TokenManager
from proxy.tokens.model import Clock

logger = logging.getLogger(__name__)

Reload = Callable[[], Awaitable["ReloadOutcome"]]


@dataclass(eq=False)
class Generation:
    """One config's running objects, closed together by ``stack``."""

    plan: Plan
    runtime: Runtime
    gateway: Gateway
    stack: AsyncExitStack


async def open_generation(
    plan: Plan,
    clock: Clock | None,
    reload: Reload | None,
    new_connection: NewConnection | None = None,
) -> Generation:
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(open_runtime(plan, clock))
        gateway = Gateway(plan.settings, runtime, reload=reload, new_connection=new_connection)
        return Generation(plan, runtime, gateway, stack.pop_all())


@dataclass
class ReloadOutcome:
    problems: list[str] = field(default_factory=list)
    """Why the reload was refused; empty when it took effect."""
    kept: list[str] = field(default_factory=list)
    """Connectors that kept their tokens."""
    warnings: list[str] = field(default_factory=list)
    requested: bool = False
    """A worker of ``--workers``: checked here, and every worker reloads on its own now."""

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        if self.requested and self.ok:
            return {"status": "requested", "message": "the config is valid; every worker reloads"}
        if not self.ok:
            return {
                "status": "refused",
                "message": "the new config is invalid; the running one keeps serving",
                "problems": self.problems,
            }
        return {"status": "reloaded", "kept_tokens": self.kept, "warnings": self.warnings}


# Limits the listening server was built with (aiohttp's parser and connection handler).
_LISTENER_LIMITS = (
    "keepalive_timeout",
    "max_line_size",
    "max_field_size",
    "max_headers",
    "access_log",
)


def needs_restart(old: Settings, new: Settings) -> tuple[Settings, list[str]]:
    """``new`` with what a reload cannot change put back, and a warning for each."""
    warnings = [
        f"server.{name} changes only with a restart; the running value stays"
        for name in _LISTENER_LIMITS
        if getattr(new.server, name) != getattr(old.server, name)
    ]
    if new.listen.host == old.listen.host and new.listen.port in (old.listen.port, 0):
        return new, warnings  # port 0: the one the kernel gave at start stands
    listen = dataclasses.replace(new.listen, host=old.listen.host, port=old.listen.port)
    warnings.append("listen.host and listen.port change only with a restart; the old ones stay")
    return dataclasses.replace(new, listen=listen), warnings


def inherit_tokens(old: Runtime, new: Runtime) -> list[str]:
    """Hand each unchanged token connector's state to its successor; their names."""
    kept = []
    for name, connector in new.connectors.items():
        predecessor = old.connectors.get(name)
        before = {} if predecessor is None else predecessor.authenticators()
        for client, manager in connector.authenticators().items():
            previous = before.get(client)
            if isinstance(manager, TokenManager) and isinstance(previous, TokenManager):
                if manager.inherit(previous):
                    kept.append(token_owner(name, client))
    return kept


async def retire(generation: Generation, grace: float) -> None:
    """Let the old generation's requests finish (up to ``grace`` seconds), then close it."""
    try:
        async with asyncio.timeout(grace):
            await generation.gateway.drained()
    except TimeoutError:
        logger.warning(
            "reload: %d request(s) on the old config still running after %.0fs; closing it",
            generation.gateway.active,
            grace,
        )
    await generation.stack.aclose()
