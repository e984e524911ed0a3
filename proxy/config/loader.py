"""Load the config file: YAML, then environment overrides, then command-line overrides.

:func:`load_settings` reports every problem at once, each as ``field.path: message``, and
raises :class:`~proxy.errors.ConfigError`. No message ever contains a configured value: YAML
errors give only line and column, validation errors are printed without their input.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import orjson
import yaml
from pydantic import TypeAdapter, ValidationError

from proxy.config.base import SHAPE, Shaped
from proxy.config.checks import cross_check
from proxy.config.handoff import LoadedConfig
from proxy.config.models import AUTH_TYPES, ENV_PREFIX, Settings
from proxy.config.per_client import taken_over
from proxy.config.sources import Location, resolve_tree
from proxy.errors import ConfigError
from proxy.secrets.redaction import REDACTOR, secret_values

T = TypeVar("T")


STATE_DIR_ENV = "TOKENPROXY_STATE_DIR"


def format_location(location: Location) -> str:
    """``('connectors', 'crm', 'auth', 'static', 'token')`` -> ``connectors.crm.auth.token``.

    pydantic puts the tag of a discriminated union into the location; users never wrote it.
    """
    parts = [str(part) for part in location]
    cleaned = [
        part
        for index, part in enumerate(parts)
        if not (part in AUTH_TYPES and _holds_auth(parts[:index]))
    ]
    return ".".join(cleaned) or "(top level)"


def _holds_auth(parents: list[str]) -> bool:
    """``auth``, or ``per_client.<name>``: where an auth block's type tag follows."""
    return parents[-1:] == ["auth"] or parents[-2:-1] == ["per_client"]


def _inherited(location: Location, raw: Mapping[str, Any]) -> bool:
    """An error of a ``per_client`` entry in a field it took over from the connector's
    ``auth``: reported once, at ``auth``."""
    parts = [str(part) for part in location]
    if len(parts) < 5 or parts[0] != "connectors" or parts[2] != "per_client":
        return False
    fields = parts[5:] if parts[4] in AUTH_TYPES else parts[4:]
    if not fields:
        return False  # a rule of the whole entry
    try:
        connector = raw["connectors"][parts[1]]
        entry, base = connector["per_client"][parts[3]], connector["auth"]
    except (KeyError, TypeError):
        return False
    if not (isinstance(entry, Mapping) and isinstance(base, Mapping)):
        return False
    return fields[0] not in entry and fields[0] in taken_over(base, entry)


def _message(error: Any) -> str:
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return "unknown key"
    if error["type"] in ("dataclass_type", "model_type"):  # (which names a class of ours)
        return "must be a mapping of keys to values"
    # pydantic prefixes the messages of our own validators; the path already says where.
    return str(error["msg"]).removeprefix("Value error, ")


class _Yaml12Loader(yaml.SafeLoader):
    """YAML's safe loader with the YAML 1.2 booleans: only ``true`` and ``false``.

    YAML 1.1 also reads ``on``, ``off``, ``yes``, ``no`` (and ``y``, ``n``) as booleans,
    which turns the key ``on:`` of ``retries`` into ``True`` (and a country code ``NO``
    into ``False``); pydantic still reads such *values* as booleans where a field wants one.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str) -> Any:
    """The document in ``text``, read as YAML 1.2 reads scalars (see :class:`_Yaml12Loader`)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # a SafeLoader


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror or type(exc).__name__})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: is not UTF-8 text"]) from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        # str(exc) quotes the offending line, which may hold a secret: give the place only.
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}: {where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of keys to values"])
    return data


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``TOKENPROXY_A__B=value`` as ``{"a": {"b": value}}``, for the config's top-level keys,
    names read case-insensitively. Where the config wants a block, list or map, a value
    written as JSON is decoded (``TOKENPROXY_CONNECTORS__CRM__HOSTS='["a.example"]'``);
    anything else is kept as written, and validation converts it."""
    overrides: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not _kinds_at([Settings], path[:1]) or not all(path):
            continue  # not the config's (TOKENPROXY_CONFIG, TOKENPROXY_MASTER_KEY...)
        # A key the config does not have goes on, to be named by validation as unknown.
        nested: Any = _json_where_wanted(value, _kinds_at([Settings], path))
        for part in reversed(path):
            nested = {part: nested}
        overrides = deep_merge(overrides, nested)
    return overrides


def _members(kind: Any) -> list[Any]:
    """``kind`` without ``Annotated`` and ``Optional``, a union as its members."""
    if get_origin(kind) is Annotated:
        return _members(get_args(kind)[0])
    if get_origin(kind) in (Union, UnionType):
        return [member for arg in get_args(kind) for member in _members(arg)]
    return [kind]


def _kinds_at(kinds: list[Any], path: list[str]) -> list[Any]:
    """What the config wants at ``path`` below ``kinds`` (several: a union's members)."""
    for part in path:
        found = []
        for kind in (member for k in kinds for member in _members(k)):
            if dataclasses.is_dataclass(kind):
                hints = get_type_hints(kind, include_extras=True)
                found += [hints[part]] if part in hints else []
            elif get_origin(kind) is dict:
                found.append(get_args(kind)[1])
        kinds = found
    return kinds


def _json_where_wanted(value: str, kinds: list[Any]) -> Any:
    members = [member for kind in kinds for member in _members(kind)]
    structured = any(
        dataclasses.is_dataclass(m) or get_origin(m) in (list, dict) or m in (list, dict)
        for m in members
    )
    if structured and value.lstrip()[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass  # validation says what is wrong with it, never quoting it
    return value


_ADAPTERS: dict[object, TypeAdapter[Any]] = {}
"""One validator per kind, built on first use (building one takes milliseconds)."""


def validate(kind: type[T], data: Any) -> T:
    """``data`` validated as the config block ``kind`` (or an ``Annotated`` form of one);
    raises pydantic's ``ValidationError``."""
    if isinstance(kind, type) and issubclass(kind, Shaped):
        kind = Annotated[kind, SHAPE]  # type: ignore[assignment]  # (its rules run)
    adapter = _ADAPTERS.get(kind) or _ADAPTERS.setdefault(kind, TypeAdapter(kind))
    result: T = adapter.validate_python(data)
    return result


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it; nested mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path, overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Load, resolve, validate and cross-check. Raises ``ConfigError`` listing every problem.

    This is data only: files named by the config (CA bundles, keys) are read and judged by
    the build step (:func:`proxy.runtime.prepare`), which ``check`` and ``run`` both run.
    """
    raw = deep_merge(_read_yaml(path), environment_overrides(os.environ))
    raw = deep_merge(raw, overrides or {})
    if raw.get("state_dir") is None:  # CONTRACT.md: $TOKENPROXY_STATE_DIR, else beside the file
        raw["state_dir"] = os.environ.get(STATE_DIR_ENV) or str(
            path.resolve().parent / ".tokenproxy"
        )
    resolved, source_problems = resolve_tree(raw)
    problems = [f"{format_location(p.location)}: {p.message}" for p in source_problems]
    unresolved = tuple(format_location(p.location) for p in source_problems)

    def add(where: str, message: str) -> None:
        # A field whose source failed is reported once, by its source problem.
        if not any(where == bad or where.startswith((bad + ".", bad + ":")) for bad in unresolved):
            problems.append(f"{where}: {message}")

    try:
        settings = validate(Settings, resolved)
    except ValidationError as exc:
        errors = [
            (format_location(error["loc"]), _message(error))
            for error in exc.errors(include_input=False, include_url=False)
            if not _inherited(error["loc"], resolved)
        ]
        for where, message in errors:
            # A per_client entry's whole-block rule that fails for the connector's auth too.
            base = re.sub(r"\.per_client\.[^.]+$", ".auth", where)
            if base == where or (base, message) not in errors:
                add(where, message)
        raise ConfigError(problems) from None
    checked = cross_check(settings)
    for problem in checked.errors:
        where, _, message = problem.partition(": ")
        add(where, message)
    if problems:
        raise ConfigError(problems)
    REDACTOR.add(secret_values(settings))  # from here on, no log line can show them
    return LoadedConfig(settings=settings, warnings=checked.warnings)
