"""Where a problem sits in a profile YAML file: the line and column of a YAML path, and repeated keys.

`ProfileTree` keeps a loaded profile's data beside its node tree (`yaml.compose`), so that the
configuration check can name `config/prod.yaml:7:17: aliases.fast[1].provider`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Where:
    culprit: str
    file: str | None = None
    line: int | None = None
    column: int | None = None


def dotted(path: Sequence[str | int]) -> str:
    """("aliases", "fast", 1, "provider") -> aliases.fast[1].provider"""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class ProfileTree:
    """A loaded profile: its data, and its node tree for the line and column of a YAML path."""

    def __init__(self, display: str, data: dict[Any, Any], root: yaml.Node | None) -> None:
        self.display = display
        self.data = data
        self.root = root

    def where(self, path: Loc, *, key: bool = False) -> Where:
        """The deepest node of `path` the file has (its key with `key`), as file:line:column."""
        node, key_node = self._find(path)
        mark = key_node.start_mark if key and key_node is not None else node.start_mark if node else None
        if mark is None:
            return Where(dotted(path), self.display)
        return Where(dotted(path), self.display, mark.line + 1, mark.column + 1)

    def has(self, path: Loc) -> bool:
        value: Any = self.data
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        return True

    def _find(self, path: Loc) -> tuple[yaml.Node | None, yaml.Node | None]:
        node, key = self.root, None
        for part in path:
            if node is None:
                break
            found_key, found = _child(node, part)
            if found is None:
                break
            node, key = found, found_key
        return node, key

    def duplicates(self) -> Iterator[tuple[Loc, int]]:
        """Each repeated mapping key (the loader keeps the last) and the line of its first occurrence."""
        yield from _duplicates(self.root, (), set())


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The (key, value) nodes of `part` under `node`; of a repeated key the last, as the loader keeps."""
    if isinstance(node, yaml.MappingNode):
        for key, value in reversed(node.value):
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None, None


def _duplicates(node: yaml.Node | None, path: Loc, visited: set[int]) -> Iterator[tuple[Loc, int]]:
    if node is None or id(node) in visited:
        return
    visited.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, (*path, index), visited)
    elif isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            if name is not None and name != "<<":
                if name in first:
                    yield (*path, name), first[name]
                first.setdefault(name, key.start_mark.line + 1)
            yield from _duplicates(value, (*path, name) if name is not None else path, visited)
