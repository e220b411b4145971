"""Where a field sits in a spec file: field paths mapped to 1-based line numbers.

A *field path* is a tuple of keys and list positions, ``("tasks", 1, "array")``, shown to
users as ``tasks[1].array`` (see :func:`format_path`).

- YAML: the composed node tree knows every node's position.
- TOML: ``tomllib`` keeps no positions, so :class:`_TomlScanner` walks the (already
  validated) source once, tracking ``[table]`` and ``[[array.of.tables]]`` headers, keys
  (dotted too), array elements (multi-line arrays too) and inline tables.

:func:`line_for` falls back to the nearest known ancestor, then to line 1.
"""

from __future__ import annotations

import contextlib
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import yaml

PathKey = str | int
FieldPath = tuple[PathKey, ...]
LineMap = dict[FieldPath, int]


def format_path(path: FieldPath) -> str:
    """``("tasks", 1, "params", "alpha")`` → ``tasks[1].params.alpha``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def line_for(lines: Mapping[FieldPath, int], path: FieldPath) -> int:
    """The line of `path`, else of its nearest recorded ancestor, else 1."""
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


# --------------------------------------------------------------------------- YAML


def yaml_lines(node: yaml.Node | None) -> tuple[LineMap, list[tuple[FieldPath, int, int]]]:
    """Lines of every key and item under `node`, and the duplicate keys found.

    A duplicate is ``(path, line, first_line)``; PyYAML itself silently keeps the last one.
    A key's line is where the key is written; a list item's is where the item starts.
    """
    import yaml  # here, not at the top: TOML specs do without PyYAML

    lines: LineMap = {}
    duplicates: list[tuple[FieldPath, int, int]] = []
    if node is None:
        return lines, duplicates
    active: set[int] = set()

    def walk(current: yaml.Node, path: FieldPath) -> None:
        lines.setdefault(path, current.start_mark.line + 1)
        if id(current) in active:  # a recursive alias
            return
        active.add(id(current))
        if isinstance(current, yaml.MappingNode):
            for key_node, value_node in current.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = str(key_node.value)
                key_path = (*path, key)
                line = key_node.start_mark.line + 1
                if key_path in lines:
                    duplicates.append((key_path, line, lines[key_path]))
                    continue
                lines[key_path] = line
                walk(value_node, key_path)
        elif isinstance(current, yaml.SequenceNode):
            for position, item in enumerate(current.value):
                walk(item, (*path, position))
        active.discard(id(current))

    walk(node, ())
    return lines, duplicates


# --------------------------------------------------------------------------- TOML


def toml_lines(text: str) -> LineMap:
    """Lines of every key, table and array element of a TOML document that parses.

    Best effort: on anything unexpected the map built so far is returned.
    """
    scanner = _TomlScanner(text)
    with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
        scanner.document()
    return scanner.lines


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n")


class _TomlScanner:
    """A structural walk over valid TOML, recording the line of each path."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: LineMap = {}
        self.table_counts: dict[FieldPath, int] = {}  # array-of-tables path -> tables so far

    # -- low level
    def _peek(self, ahead: int = 0) -> str:
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def _advance_to(self, end: int) -> None:
        self.line += self.text.count("\n", self.pos, end)
        self.pos = end

    def _skip(self, newlines: bool) -> None:
        """Skip blanks and comments, and newlines too when `newlines`."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r":
                self.pos += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif char == "\n" and newlines:
                self.pos += 1
                self.line += 1
            else:
                return

    def _expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise ValueError(f"expected {token!r} at line {self.line}")
        self._advance_to(self.pos + len(token))

    # -- grammar
    def document(self) -> None:
        prefix: FieldPath = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self._peek() == "[":
                prefix = self._header()
            else:
                self._key_value(prefix)

    def _header(self) -> FieldPath:
        line = self.line
        array = self._peek(1) == "["
        self._advance_to(self.pos + (2 if array else 1))
        keys = self._key()
        self._expect("]]" if array else "]")
        path: list[PathKey] = []
        for number, key in enumerate(keys):
            path.append(key)
            here = tuple(path)
            self.lines.setdefault(here, line)
            if array and number == len(keys) - 1:
                count = self.table_counts.get(here, 0)
                self.table_counts[here] = count + 1
                path.append(count)
                self.lines[tuple(path)] = line
            elif here in self.table_counts:
                path.append(self.table_counts[here] - 1)
        self.lines[tuple(path)] = line
        return tuple(path)

    def _key_value(self, prefix: FieldPath) -> None:
        line = self.line
        keys = self._key()
        path = prefix
        for key in keys:
            path = (*path, key)
            self.lines.setdefault(path, line)
        self._skip(newlines=False)
        self._expect("=")
        self._skip(newlines=False)
        self._value(path)

    def _key(self) -> list[str]:
        keys: list[str] = []
        while True:
            self._skip(newlines=False)
            char = self._peek()
            start = self.pos
            if char == '"':
                self._basic_string()
                keys.append(tomllib.loads("k = " + self.text[start : self.pos])["k"])
            elif char == "'":
                self._advance_to(self.text.index("'", self.pos + 1) + 1)
                keys.append(self.text[start + 1 : self.pos - 1])
            else:
                end = self.pos
                while end < len(self.text) and self.text[end] in _BARE_KEY:
                    end += 1
                if end == self.pos:
                    raise ValueError(f"expected a key at line {self.line}")
                keys.append(self.text[self.pos : end])
                self.pos = end
            self._skip(newlines=False)
            if self._peek() != ".":
                return keys
            self.pos += 1

    def _basic_string(self) -> None:
        end = self.pos + 1
        while self.text[end] != '"':
            end += 2 if self.text[end] == "\\" else 1
        self._advance_to(end + 1)

    def _multiline_string(self, quote: str) -> None:
        delimiter = quote * 3
        end = self.pos + 3
        while not self.text.startswith(delimiter, end):
            end += 2 if (quote == '"' and self.text[end] == "\\") else 1
            if end >= len(self.text):
                raise ValueError("unterminated string")
        end += 3
        extra = 0
        while extra < 2 and end < len(self.text) and self.text[end] == quote:  # """a"""" etc.
            end += 1
            extra += 1
        self._advance_to(end)

    def _value(self, path: FieldPath) -> None:
        char = self._peek()
        if self.text.startswith('"""', self.pos) or self.text.startswith("'''", self.pos):
            self._multiline_string(char)
        elif char == '"':
            self._basic_string()
        elif char == "'":
            self._advance_to(self.text.index("'", self.pos + 1) + 1)
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            end = self.pos
            while end < len(self.text) and self.text[end] not in _SCALAR_END:
                end += 1
            self._advance_to(end)

    def _array(self, path: FieldPath) -> None:
        self._advance_to(self.pos + 1)
        position = 0
        while True:
            self._skip(newlines=True)
            if self._peek() == "]":
                self._advance_to(self.pos + 1)
                return
            item = (*path, position)
            self.lines[item] = self.line
            self._value(item)
            position += 1
            self._skip(newlines=True)
            if self._peek() == ",":
                self._advance_to(self.pos + 1)

    def _inline_table(self, path: FieldPath) -> None:
        self._advance_to(self.pos + 1)
        while True:
            self._skip(newlines=True)
            if self._peek() == "}":
                self._advance_to(self.pos + 1)
                return
            self._key_value(path)
            self._skip(newlines=True)
            if self._peek() == ",":
                self._advance_to(self.pos + 1)
