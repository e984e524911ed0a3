"""Value sources resolved at load: ``${VAR}``, ``${VAR:-default}``, ``file:/path`` and
``enc:v1:...`` (decrypted with the master key, see :mod:`proxy.secrets.envelope`).

Resolution walks the raw config tree (YAML merged with environment overrides) before
validation, so every field, whatever its type, can take its value from the environment or a
file. A problem names the field and the variable or file, never the value. A resolved value is
never interpreted again: a variable whose value starts with ``file:`` stays that string.
``$${`` stands for a literal ``${``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.secrets.envelope import PREFIX as ENVELOPE_PREFIX
from proxy.secrets.envelope import EnvelopeError, MasterKeys

_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE_PREFIX = "file:"
# A secret file is small; anything larger is a mistake (a directory of certs, a log file).
MAX_FILE_VALUE_BYTES = 1024 * 1024

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class SourceProblem:
    location: Location
    message: str


class _Unresolved(Exception):
    pass


def _expand_variables(text: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise _Unresolved(f"environment variable {name} is not set")
            return default
        return value

    return _VARIABLE.sub(replace, text)


def _read_file(path_text: str) -> str:
    path = Path(path_text)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_VALUE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _Unresolved(f"cannot read file {path_text} ({reason})") from None
    if len(data) > MAX_FILE_VALUE_BYTES:
        raise _Unresolved(f"file {path_text} is larger than {MAX_FILE_VALUE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Unresolved(f"file {path_text} is not UTF-8 text") from None
    # Files written by `echo` end in a newline that is not part of the secret.
    return text.removesuffix("\n").removesuffix("\r")


class _Keys:
    """The master keys, read from the environment on first need only."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._keys: MasterKeys | None = None

    def decrypt(self, envelope: str) -> str:
        if self._keys is None:
            self._keys = MasterKeys.from_environment(self._environ)
        return self._keys.decrypt(envelope)


def resolve_value(text: str, environ: Mapping[str, str], keys: _Keys | None = None) -> str:
    """Resolve one raw string; raises ``ValueError`` with a message free of the value."""
    try:
        if text.startswith(_FILE_PREFIX):
            return _read_file(_expand_variables(text[len(_FILE_PREFIX) :], environ))
        if text.startswith(ENVELOPE_PREFIX):
            return (keys or _Keys(environ)).decrypt(text)
        return _expand_variables(text, environ)
    except (_Unresolved, EnvelopeError) as exc:
        raise ValueError(str(exc)) from None


def resolve_tree(
    tree: Any, environ: Mapping[str, str] | None = None
) -> tuple[Any, list[SourceProblem]]:
    """Return a copy of ``tree`` with every string value resolved, and every problem found.

    A value that cannot be resolved becomes :data:`UNRESOLVED` in the copy: present (so no
    rule reports the field as missing) and invalid for every field type but a string (so a
    rule that rejects it does so at the field's own location, which the loader skips). Each
    problem is then reported once, as the source problem.
    """
    env = os.environ if environ is None else environ
    keys = _Keys(env)
    problems: list[SourceProblem] = []

    def walk(node: Any, location: Location) -> Any:
        if isinstance(node, dict):
            return {key: walk(child, (*location, key)) for key, child in node.items()}
        if isinstance(node, list):
            return [walk(child, (*location, index)) for index, child in enumerate(node)]
        if isinstance(node, str):
            try:
                return resolve_value(node, env, keys)
            except ValueError as exc:
                problems.append(SourceProblem(location, str(exc)))
                return UNRESOLVED
        return node

    return walk(tree, ()), problems


UNRESOLVED = "\x00unresolved"
"""Stands in for a value whose source failed; no valid value holds a NUL character."""
