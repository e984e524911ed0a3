"""Paths into a JSON answer: dotted (``data.auth.token``, ``items.0.value``) or JSONPath
(``$.data.auth.token``, ``$.items[0].value``, ``$['odd key']``).

Only plain member and index steps: no wildcards, filters or recursion, so a path names
exactly one place and reading it costs a few dictionary lookups. Paths are parsed once, at
config load, where a malformed one is a config error, and the parsed path is what the
runtime uses (:data:`JsonPathField`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from proxy.config.base import Before

_STEP = re.compile(
    r"""\.(?P<name>[^.\[\]]+)          # .name
      | \[(?P<index>-?\d+)\]           # [0]
      | \['(?P<single>[^']*)'\]        # ['name']
      | \["(?P<double>[^"]*)"\]        # ["name"]
    """,
    re.VERBOSE,
)

Step = str | int


@dataclass(frozen=True)
class JsonPath:
    text: str
    steps: tuple[Step, ...]

    def find(self, document: Any) -> Any:
        """The value at this path, or ``None`` when any step is missing."""
        node = document
        for step in self.steps:
            if isinstance(node, dict) and isinstance(step, str):
                node = node.get(step)
            elif isinstance(node, list) and isinstance(step, int):
                node = node[step] if -len(node) <= step < len(node) else None
            elif isinstance(node, list) and isinstance(step, str) and step.isdigit():
                index = int(step)  # dotted paths name list items by number: items.0.value
                node = node[index] if index < len(node) else None
            else:
                return None
            if node is None:
                return None
        return node


def parse_path(text: str) -> JsonPath:
    """Parse ``text``; raises ``ValueError`` for anything but member and index steps."""
    if not text or text != text.strip():
        raise ValueError("must be a non-empty path such as data.token or $.data.token")
    # Parse "$"-less, dotted-first: "a.b" reads as ".a.b"; `shift` maps back to text positions.
    rest, shift = (text[1:], 1) if text.startswith("$") else ("." + text, -1)
    steps: list[Step] = []
    position = 0
    while position < len(rest):
        match = _STEP.match(rest, position)
        if match is None:
            where = max(position + shift, 0) + 1
            raise ValueError(f"cannot read the path {text!r} at character {where}")
        if match.group("index") is not None:
            steps.append(int(match.group("index")))
        else:
            steps.append(next(g for g in match.group("name", "single", "double") if g is not None))
        position = match.end()
    if not steps:
        raise ValueError("must name at least one member, such as $.token")
    return JsonPath(text, tuple(steps))


def _validated(value: Any) -> JsonPath:
    if isinstance(value, JsonPath):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a path such as data.token or $.data.token")
    return parse_path(value)


JsonPathField = Annotated[JsonPath, Before(_validated)]
"""A config value that is a path: parsed once by validation, and kept parsed for the runtime."""
