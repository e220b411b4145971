"""``{name}`` placeholders in task commands (and in the string arguments of calls).

Syntax, deliberately small so that ordinary shell keeps working:

- ``{name}`` where *name* is an identifier (letters, digits, ``_``) is a placeholder.
- ``{{`` and ``}}`` are a literal ``{`` and ``}``.
- ``${...}`` is shell syntax and is left alone, so ``${HOME}`` and ``${index}`` reach the
  shell untouched; ``$HOME`` has no braces and is never a placeholder either.
- Any other brace (``{}`` in ``find -exec``, brace expansion ``{a,b}``, ``awk '{ print }'``
  with a space) is literal text. ``awk '{print}'`` *is* a placeholder: write ``{{print}}``.

In commands every value is inserted through :func:`shlex.quote`, so a value is always
one shell word and never code. That only holds where the shell reads words, so a command
may not put a placeholder inside '...', "...", `...`, a here-document (``<<``), a
``#`` comment or right after a backslash: there the quoting would be undone (``echo "{v}"``
with ``v = $(rm -rf ~)`` would run it). Write ``echo {v}``; the value arrives quoted.
Commands that run their arguments as code (``eval``, ``sh -c``, ``ssh host``) will of
course run a value given to them.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

#: Placeholders every task may use, whatever its group looks like.
BUILTIN_PLACEHOLDERS: tuple[str, ...] = ("task_id", "job_id", "attempt", "node")
#: The member index; only in groups with ``array`` or ``params``.
INDEX_PLACEHOLDER = "index"
#: Placeholder names that a ``params`` name may not take.
RESERVED_NAMES: frozenset[str] = frozenset((*BUILTIN_PLACEHOLDERS, INDEX_PLACEHOLDER))

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"\{\{|\}\}|\$\{|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD_BREAK = frozenset(" \t\n;&|()<>")
_WHOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class UnknownPlaceholderError(KeyError, ValueError):
    """A template names a placeholder that has no value.

    Both a ``KeyError`` (a missing name) and a ``ValueError`` (a bad template), so callers
    may catch either. ``name`` is the placeholder without braces.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown placeholder {{{self.name}}}"


class UnsafePlaceholderError(ValueError):
    """A command places a placeholder where shell quoting cannot protect its value."""


def placeholder_names(template: str) -> Iterator[str]:
    """The placeholder names in `template`, in order (repeats included)."""
    for match in _TOKEN.finditer(template):
        if match.group(1) is not None:
            yield match.group(1)


def _substitute(template: str, values: Mapping[str, Any], quote: bool) -> str:
    out: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(template):
        out.append(template[pos : match.start()])
        pos = match.end()
        token, name = match.group(0), match.group(1)
        if name is None:
            out.append(token[0] if token in ("{{", "}}") else token)
            continue
        if name not in values:
            raise UnknownPlaceholderError(name)
        text = str(values[name])
        out.append(shlex.quote(text) if quote else text)
    out.append(template[pos:])
    return "".join(out)


def render_command(template: str, values: Mapping[str, Any]) -> str:
    """`template` with each ``{name}`` replaced by ``shlex.quote(str(values[name]))``.

    ``{{``/``}}`` become literal braces and ``${...}`` is left for the shell. Raises
    :class:`UnknownPlaceholderError` (a ``KeyError`` and a ``ValueError``) naming the first
    placeholder missing from `values`, and :class:`UnsafePlaceholderError` (a
    ``ValueError``) for a placeholder inside quotes, backticks or a here-document.
    """
    problem = quoting_problem(template)
    if problem:
        raise UnsafePlaceholderError(problem)
    return _substitute(template, values, quote=True)


@functools.lru_cache(maxsize=512)
def quoting_problem(template: str) -> str | None:
    """Why a placeholder in shell command `template` would not stay one quoted word.

    Tracks the shell's quoting state ('...', "...", `...`, backslashes) and here-documents
    (every line after a ``<<`` operator); ``None`` when every placeholder is outside them.
    """
    state = ""  # "", "'", '"' or "`"
    heredoc_pending = heredoc = False
    pos = 0
    while pos < len(template):
        token = _TOKEN.match(template, pos)
        if token:
            name = token.group(1)
            if name is not None and (state or heredoc):
                return _quoting_message(name, state)
            pos = token.end()
            continue
        char = template[pos]
        if state == "'":
            state = "" if char == "'" else state
        elif char == "\\":
            after = _TOKEN.match(template, pos + 1)
            if after and after.group(1) is not None:
                return (f"placeholder {{{after.group(1)}}} follows a backslash, which would "
                        "unquote its value; remove the backslash")
            pos += 1  # the next character is escaped (outside single quotes)
        elif state:
            state = "" if char == state else state
        elif char in "'\"`":
            state = char
        elif char == "#" and (pos == 0 or template[pos - 1] in _WORD_BREAK):
            end = template.find("\n", pos)
            end = len(template) if end < 0 else end
            name = next(placeholder_names(template[pos:end]), None)
            if name is not None:
                return (f"placeholder {{{name}}} is inside a # comment, where a newline in "
                        "its value would start a new command; remove it from the comment")
            pos = end
            continue
        elif template.startswith("<<", pos) and not template.startswith("<<<", pos):
            heredoc_pending = True
            pos += 1
        elif char == "\n" and heredoc_pending:
            heredoc = True
        pos += 1
    return None


def _quoting_message(name: str, state: str) -> str:
    if not state:
        return (
            f"placeholder {{{name}}} is inside a here-document, where the shell would run "
            "$(...) found in its value; pass it as an argument instead"
        )
    where = {"'": "single quotes", '"': "double quotes", "`": "backticks"}[state]
    return (
        f"placeholder {{{name}}} is inside {where}, where its value could run as code; "
        f"write {{{name}}} without quotes around it (values are shell-quoted for you)"
    )


def render_text(template: str, values: Mapping[str, Any]) -> str:
    """Like :func:`render_command` but without shell quoting (for non-shell strings)."""
    return _substitute(template, values, quote=False)


def render_value(value: Any, values: Mapping[str, Any]) -> Any:
    """Fill placeholders in a call's ``args``/``kwargs`` value, recursively.

    A string that is exactly one placeholder (``"{index}"``) becomes the value itself, with
    its type (an ``int`` index stays an ``int``); other strings are filled with
    :func:`render_text`; lists, tuples and dicts are walked; anything else is returned as is.
    """
    if isinstance(value, str):
        whole = _WHOLE.fullmatch(value)
        if whole:
            name = whole.group(1)
            if name not in values:
                raise UnknownPlaceholderError(name)
            return values[name]
        return render_text(value, values)
    if isinstance(value, list | tuple):
        return type(value)(render_value(item, values) for item in value)
    if isinstance(value, dict):
        return {key: render_value(item, values) for key, item in value.items()}
    return value


def known_placeholders(indexed: bool, params: Mapping[str, Any]) -> list[str]:
    """Every placeholder a group may use: the built-ins, ``index`` when `indexed`, params."""
    names = list(BUILTIN_PLACEHOLDERS)
    if indexed:
        names.append(INDEX_PLACEHOLDER)
    names.extend(params)
    return names


def check_template(
    template: str, indexed: bool, params: Mapping[str, Any], shell: bool = True
) -> str | None:
    """Why `template` cannot be rendered for such a group, or ``None`` when it can.

    With `shell` (a command), placeholders must also sit outside quotes; see
    :func:`quoting_problem`.
    """
    known = known_placeholders(indexed, params)
    for name in placeholder_names(template):
        if name in known:
            continue
        if name == INDEX_PLACEHOLDER:
            return (
                "{index} is only defined for groups with 'array', 'params', 'shards' or "
                "'on_every_node'; add an array or remove the placeholder"
            )
        shown = ", ".join("{" + n + "}" for n in sorted(known))
        return (
            f"unknown placeholder {{{name}}}: expected one of {shown} "
            "(write {{ and }} for literal braces; ${NAME} is left to the shell)"
        )
    return quoting_problem(template) if shell else None
