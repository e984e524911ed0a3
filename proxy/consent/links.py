"""Where a person authorizes a connector: its start URL and its ``redirect_uri``.

A configured ``redirect_uri`` wins (a shared tier behind an ingress knows its public name);
otherwise both are derived from the listen address (a wildcard address as ``127.0.0.1``,
which is where an operator's browser on the same machine reaches a sidecar), with the port
the server actually bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from proxy.config.models import Settings

_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


class ConsentSite:
    """This proxy's origin as a browser reaches it; one per runtime, told the bound port."""

    def __init__(self, settings: Settings) -> None:
        host = settings.listen.host
        host = "127.0.0.1" if host in _WILDCARDS else host
        self._host = f"[{host}]" if ":" in host else host
        self.port = settings.listen.port
        self.prefix = settings.admin.prefix

    def bound(self, port: int) -> None:
        """The port the listener got (the configured one, or the kernel's pick for 0)."""
        self.port = port

    @property
    def origin(self) -> str:
        return f"http://{self._host}:{self.port}"


@dataclass(frozen=True)
class ConsentLinks:
    connector: str
    site: ConsentSite
    configured_redirect_uri: str | None

    def path(self, step: str) -> str:
        """``{admin.prefix}/oauth/{name}/{step}``: ``start`` or ``callback``."""
        return f"{self.site.prefix}/oauth/{self.connector}/{step}"

    @property
    def redirect_uri(self) -> str:
        return self.configured_redirect_uri or self.site.origin + self.path("callback")

    @property
    def start_url(self) -> str:
        """Next to the configured callback when it is ours under another name; else on the
        listen address."""
        configured = self.configured_redirect_uri
        if configured is not None:
            url = URL(configured)
            if url.path.endswith(f"/oauth/{self.connector}/callback"):
                return str(url.with_path(url.path.removesuffix("callback") + "start"))
        return self.site.origin + self.path("start")
