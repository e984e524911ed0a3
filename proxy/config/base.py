"""The config blocks' shared parts: the strict block, secrets, and the validated value types.

Config blocks are plain frozen dataclasses, and this module, like every block's module,
imports no pydantic: a serving worker holds its config without loading the validator
(about 11 MB of RSS). pydantic validates into these dataclasses where a config is loaded
(:mod:`proxy.config.loader`); what it should check is said by metadata in the fields'
``Annotated`` types (:class:`Check`, :class:`Before`, :class:`Rules`, :class:`Like`), which
turn into pydantic's own validators only when a validator is built. Rules relating fields
of one block are its ``__post_init__``, which validation runs and unpickling does not; rules
about the raw input, or about which keys it gave, are a :class:`Shaped` block's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Generic, TypeVar, dataclass_transform

T = TypeVar("T")

# RFC 9110 §5.6.2 token characters: what a header field name may be made of.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Header values we send may hold visible ASCII and spaces, never CR, LF, NUL or other controls.
_FIELD_VALUE_RE = re.compile(r"[\x20-\x7e]*")
_HOST_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


@dataclass_transform(
    frozen_default=True, kw_only_default=True, field_specifiers=(dataclasses.field,)
)
def block(cls: type[T]) -> type[T]:
    """A config block: a frozen, keyword-only dataclass whose unknown keys are errors."""
    cls.__pydantic_config__ = {"extra": "forbid"}  # type: ignore[attr-defined]
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


class Secret(Generic[T]):
    """A configured secret: its value only by :meth:`get_secret_value`, masked everywhere
    else (``repr``, ``str``, f-strings, tracebacks' locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def get_secret_value(self) -> T:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret[T]], tuple[T]]:
        return (type(self), (self._value,))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        args = getattr(source, "__args__", ())
        inner = handler.generate_schema(args[0]) if args else core_schema.str_schema()
        return core_schema.no_info_before_validator_function(
            lambda value: value.get_secret_value() if isinstance(value, Secret) else value,
            core_schema.no_info_after_validator_function(cls, inner),
        )


SecretStr = Secret[str]


@dataclasses.dataclass(frozen=True)
class Check:
    """Field metadata: ``function(value)`` after the type's own validation; it returns the
    value kept, or raises ``ValueError`` with a message that never quotes a secret."""

    function: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(self.function, handler(source))


@dataclasses.dataclass(frozen=True)
class Before:
    """Field metadata: ``function(raw)`` before the type's validation (reshaping input)."""

    function: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_before_validator_function(self.function, handler(source))


class Rules:
    """Field metadata: constraints in ``pydantic.Field``'s words (``ge``, ``le``, ``gt``,
    ``min_length``, ``discriminator``), checked by pydantic with its own messages, after
    the metadata before them (annotated-types' grouped metadata, which pydantic expands)."""

    __is_annotated_types_grouped_metadata__ = True

    def __init__(self, **constraints: Any) -> None:
        self.constraints = constraints

    def __iter__(self) -> Iterator[Any]:
        from pydantic import Field

        yield Field(**self.constraints)


class Shaped:
    """A block with rules around its validation: :meth:`reshape` its raw input first,
    :meth:`settle` once it is made, knowing which keys the input gave (for rules about what
    was written rather than what the block holds: a default is not a choice). pydantic runs
    them where the block's type carries :data:`SHAPE` (``Annotated[Block, SHAPE]``), and
    :func:`~proxy.config.loader.validate` adds it to a shaped block validated on its own."""

    @staticmethod
    def reshape(raw: Any) -> Any:
        return raw

    def settle(self, written: frozenset[str]) -> None:
        """Raise ``ValueError`` for a rule broken; the block may note what it needs."""


class _Shape:
    """Type metadata of a :class:`Shaped` block, at each place it is used: pydantic applies
    metadata per use, where a hook on the class would run at its first use only."""

    def __get_pydantic_core_schema__(self, source: type[Shaped], handler: Any) -> Any:
        from pydantic_core import core_schema

        def validate(raw: Any, inner: Callable[[Any], Any]) -> Any:
            data = source.reshape(raw)
            made = inner(data)
            made.settle(frozenset(data) if isinstance(data, dict) else frozenset())
            return made

        return core_schema.no_info_wrap_validator_function(validate, handler(source))


SHAPE = _Shape()


@dataclasses.dataclass(frozen=True)
class Like:
    """Field metadata: validate as pydantic's type ``name`` (``ByteSize``, ``IPvAnyNetwork``)
    and keep what it makes, as an ``int`` where it is one."""

    name: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        import pydantic
        from pydantic_core import core_schema

        kind = getattr(pydantic, self.name)
        plain = int if issubclass(kind, int) else (lambda value: value)
        return core_schema.no_info_after_validator_function(plain, handler.generate_schema(kind))


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


HeaderName = Annotated[str, Check(_header_name)]
OriginValue = Annotated[str, Check(_origin)]
FieldValue = Annotated[str, Check(_field_value)]
RoutePrefix = Annotated[str, Check(_route_prefix)]
HostName = Annotated[str, Check(_host_name)]
ByteSize = Annotated[int, Like("ByteSize")]
"""A size in bytes, written as a number or with a unit (``64KiB``, ``100MiB``)."""
