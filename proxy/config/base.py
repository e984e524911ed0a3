"""The strict base model and the small validated value types shared by the config models."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# RFC 9110 §5.6.2 token characters: what a header field name may be made of.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values we send may hold visible ASCII and spaces, never CR, LF, NUL or other controls.
_FIELD_VALUE_RE = re.compile(r"[\x20-\x7e]*")
_HOST_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


class StrictModel(BaseModel):
    """Every config block: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals; any other name counts as public."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _header_name(value: str) -> str:
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError("must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)")
    return value


def _field_value(value: str) -> str:
    if not _FIELD_VALUE_RE.fullmatch(value):
        raise ValueError("may hold only printable ASCII characters (no CR, LF or controls)")
    return value


def _route_prefix(value: str) -> str:
    """A path prefix: ``/`` plus plain segments; stored without its trailing slash."""
    if not value.startswith("/"):
        raise ValueError("must start with '/'")
    trimmed = value.rstrip("/")
    for segment in trimmed.split("/")[1:]:
        if segment in ("", ".", ".."):
            raise ValueError("must not contain empty, '.' or '..' segments")
        if any(ch in segment for ch in "?#%\\;") or not segment.isprintable() or " " in segment:
            raise ValueError("may not contain '?', '#', '%', ';', '\\', spaces or controls")
    return trimmed


def _host_name(value: str) -> str:
    """A hostname with an optional port, compared case-insensitively."""
    host, _, port = value.lower().partition(":")
    if not _HOST_RE.fullmatch(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError("must be a hostname with an optional :port, without a scheme or path")
    return value.lower()


def _origin(value: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``, compared lower-cased."""
    scheme, sep, authority = value.lower().rstrip("/").partition("://")
    if scheme not in ("http", "https") or not sep or "/" in authority:
        raise ValueError("must be an origin such as https://app.example.com (no path)")
    _host_name(authority)
    return f"{scheme}://{authority}"


HeaderName = Annotated[str, AfterValidator(_header_name)]
OriginValue = Annotated[str, AfterValidator(_origin)]
FieldValue = Annotated[str, AfterValidator(_field_value)]
RoutePrefix = Annotated[str, AfterValidator(_route_prefix)]
HostName = Annotated[str, AfterValidator(_host_name)]
