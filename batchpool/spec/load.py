"""Read a job spec file, merge ``[defaults]``, resolve ``files`` and validate it.

Every problem becomes one :class:`~batchpool.errors.SpecError` with the file as given,
the 1-based line and the field path (``tasks[1].array``). When a file has several
problems, the one nearest the top of the file is reported.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from pydantic import BaseModel, ValidationError

from batchpool.errors import SpecError
from batchpool.spec.locate import FieldPath, LineMap, format_path, line_for, toml_lines, yaml_lines
from batchpool.spec.model import NOT_DEFAULTABLE, DefaultsSpec, JobSpec, MpiSpec, TaskGroupSpec
from batchpool.spec.shards import match_files, npy_rows

if TYPE_CHECKING:
    import yaml

SpecFormat = Literal["toml", "yaml", "json"]
FORMATS: dict[str, SpecFormat] = {
    ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json",
}


@functools.cache
def _spec_loader() -> type[yaml.SafeLoader]:
    """PyYAML's safe loader, plus YAML 1.2 floats without a dot (``2e6`` is 2000000.0).

    YAML 1.1 reads ``2e6`` as the *string* "2e6", which would reach a task's kwargs
    silently; JSON files (read as YAML) need this too. Built on first use: PyYAML is
    imported only for YAML and JSON specs (10 ms off every `batchpool run` of a TOML one).
    """
    import yaml

    class SpecLoader(yaml.SafeLoader):
        pass

    SpecLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return SpecLoader


_TOML_WHERE = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)\s*$")


def load_spec(path: str | Path) -> JobSpec:
    """Load and validate the spec at `path` (format by extension: .toml, .yaml/.yml, .json).

    ``files`` come back as absolute paths, resolved against the spec file's directory.
    Raises :class:`SpecError` (with file, line and field) on any problem.
    """
    file = str(path)
    spec_path = Path(path)
    fmt = FORMATS.get(spec_path.suffix.lower())
    if fmt is None:
        raise SpecError(
            f"unknown spec format {spec_path.suffix or '(no extension)'!r}: "
            "use a .toml, .yaml, .yml or .json file",
            file=file,
        )
    try:
        raw = spec_path.read_bytes()
    except FileNotFoundError:
        raise SpecError("spec file not found", file=file) from None
    except OSError as exc:
        raise SpecError(f"cannot read the spec file: {exc.strerror or exc}", file=file) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError("the spec file is not UTF-8 text", file=file, line=line) from None
    text = text.replace("\r\n", "\n")
    return parse_spec_text(text, file, fmt, spec_path.parent)


def parse_spec_text(text: str, filename: str, fmt: SpecFormat, base_dir: Path) -> JobSpec:
    """Validate spec `text` in `fmt` ("toml", "yaml" or "json"; JSON is read as YAML).

    `filename` is only used in errors; relative ``files`` are resolved against `base_dir`.
    """
    duplicates: list[tuple[FieldPath, int, int]] = []
    if fmt == "toml":
        data, lines = parse_toml(text, filename), toml_lines(text)
    elif fmt in ("yaml", "json"):
        data, lines, duplicates = _parse_yaml(text, filename, fmt)
    else:
        raise SpecError(f"unknown spec format {fmt!r}: expected 'toml', 'yaml' or 'json'",
                        file=filename)
    base = Path(os.path.abspath(base_dir))
    return _Builder(filename, lines, base).build(data, duplicates)


# ----------------------------------------------------------------- parsing


def parse_toml(text: str, filename: str) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        where = _TOML_WHERE.search(message)
        line = text.rstrip().count("\n") + 1  # "at end of document": the last line written
        if where:
            message = message[: where.start()]
            if where.group(1):
                line = int(where.group(1))
        raise SpecError(f"TOML syntax error: {message}", file=filename, line=line) from None


def _parse_yaml(
    text: str, filename: str, fmt: SpecFormat
) -> tuple[Any, LineMap, list[tuple[FieldPath, int, int]]]:
    if fmt == "json":
        # YAML refuses tabs as indentation; in valid JSON a tab can only be whitespace.
        text = text.replace("\t", " ")
    import yaml

    loader = _spec_loader()(text)
    try:
        node = loader.get_single_node()
        # Walk before constructing: construction flattens merge keys (<<) in place.
        lines, duplicates = yaml_lines(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise SpecError(
            f"{fmt.upper()} syntax error: {problem}",
            file=filename,
            line=mark.line + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{fmt.upper()} syntax error: {exc}", file=filename) from None
    finally:
        loader.dispose()
    return data, lines, duplicates


# ----------------------------------------------------------------- building


@dataclass(frozen=True)
class _Problem:
    line: int
    path: FieldPath | None
    message: str


class _Builder:
    """Turns parsed data into a JobSpec, collecting located problems on the way."""

    def __init__(self, filename: str, lines: LineMap, base_dir: Path) -> None:
        self.filename = filename
        self.lines = lines
        self.base_dir = base_dir
        self.problems: list[_Problem] = []
        self.raw_tasks: list[Any] = []
        self.defaults: dict[str, Any] = {}

    def build(self, data: Any, duplicates: list[tuple[FieldPath, int, int]]) -> JobSpec:
        if data is None:
            self._fail(1, None, "the spec is empty: expected at least name and one [[tasks]]")
        if not isinstance(data, dict):
            self._fail(1, None, "expected a table of fields (name, tasks, ...) at the top level, "
                       f"got {_show(data)}")
        for path, line, first_line in duplicates:
            self.problems.append(
                _Problem(line, path, f"duplicate key {path[-1]!r} (first set on line {first_line})")
            )
        data = dict(data)
        if "base_dir" in data:  # set by the loader, not by users
            self._add(("base_dir",), _unknown_field("base_dir", _allowed(())))
            del data["base_dir"]
        defaults_ok = self._take_defaults(data.pop("defaults", None))
        if isinstance(data.get("files"), list):
            data["files"] = self._resolve_files(data["files"])
        if isinstance(data.get("tasks"), list):
            self.raw_tasks = data["tasks"]
            if defaults_ok:
                data["tasks"] = [self._merge(task) for task in self.raw_tasks]
            data["tasks"] = [self._resolve_shards(position, task)
                             for position, task in enumerate(data["tasks"])]
        data["base_dir"] = str(self.base_dir)
        spec: JobSpec | None = None
        try:
            spec = JobSpec.model_validate(data)
        except ValidationError as exc:
            self._add_validation(exc, (), data)
        if spec is None and not self.problems:  # pragma: no cover - pydantic always explains
            self._fail(1, None, "the spec is not valid")
        if self.problems or spec is None:
            first = min(self.problems, key=lambda p: p.line)
            self._fail(first.line, first.path, first.message)
        return spec

    # -- pieces
    def _take_defaults(self, defaults: Any) -> bool:
        if defaults is None:
            return True
        if not isinstance(defaults, dict):
            self._add(("defaults",), f"expected a table of task fields, got {_show(defaults)}")
            return False
        before = len(self.problems)
        for key in defaults:
            if key in NOT_DEFAULTABLE:
                self._add(("defaults", key),
                          f"{key!r} cannot be set in [defaults]; set it in each [[tasks]] entry")
        allowed = {k: v for k, v in defaults.items() if k not in NOT_DEFAULTABLE}
        try:
            DefaultsSpec.model_validate(allowed)
        except ValidationError as exc:
            self._add_validation(exc, ("defaults",), allowed)
        self.defaults = allowed
        return len(self.problems) == before

    def _merge(self, task: Any) -> Any:
        if not isinstance(task, dict) or not self.defaults:
            return task
        merged = {**self.defaults, **task}
        if isinstance(self.defaults.get("env"), dict) and isinstance(task.get("env"), dict):
            merged["env"] = {**self.defaults["env"], **task["env"]}
        return merged

    def _resolve_shards(self, position: int, task: Any) -> Any:
        """Turn a group's ``shards`` into absolute paths; a glob into the files it matches."""
        if not isinstance(task, dict) or not isinstance(task.get("shards"), dict):
            return task
        shards = dict(task["shards"])
        where = ("tasks", position, "shards")
        base = str(self.base_dir)
        if "glob" in shards and "files" in shards:
            self._add((*where, "files"), "set one of 'glob' and 'files'")
        elif isinstance(shards.get("glob"), str):
            matched = match_files(base, shards["glob"])
            if not matched:
                self._add((*where, "glob"), f"{shards['glob']!r} matches no file under {base}")
            shards["files"] = matched
        elif isinstance(shards.get("files"), list):
            resolved = []
            for number, entry in enumerate(shards["files"]):
                if isinstance(entry, str):
                    entry = os.path.normpath(os.path.join(base, os.path.expanduser(entry)))
                    if not os.path.isfile(entry):
                        self._add((*where, "files", number), f"shard file {entry} not found")
                resolved.append(entry)
            shards["files"] = resolved
        if isinstance(shards.get("npy"), str):
            full = os.path.normpath(os.path.join(base, os.path.expanduser(shards["npy"])))
            shards["npy"] = full
            count = shards.get("count")
            try:
                rows = npy_rows(full)
            except (OSError, ValueError) as exc:
                self._add((*where, "npy"), f"cannot read {full} as a .npy array: {exc}")
            else:
                if isinstance(count, int) and count > rows:
                    self._add((*where, "count"),
                              f"{count} shards of {rows} rows would leave some empty; "
                              f"use count <= {rows}")
        return {**task, "shards": shards}

    def _resolve_files(self, entries: list[Any]) -> list[Any]:
        resolved: list[Any] = []
        staged_as: dict[str, int] = {}  # files are staged into the attempt dir by name
        for position, entry in enumerate(entries):
            path = ("files", position)
            if not isinstance(entry, str):
                resolved.append(entry)  # the model says what is wrong with it
                continue
            if not entry.strip():
                self._add(path, "a resource file name must not be empty")
                resolved.append(entry)
                continue
            # normpath, not resolve(): a symlink keeps the name it was given.
            full = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(entry)))
            if not os.path.exists(full):
                self._add(path, f"resource file {entry!r} not found (looked for {full}); "
                          "files are relative to the spec file's directory")
            elif not os.path.isfile(full):
                self._add(path, f"resource {entry!r} is not a regular file ({full}); "
                          "list files, not directories")
            name = os.path.basename(full)
            if name in staged_as:
                self._add(path, f"resource {entry!r} would be staged as {name!r}, like "
                          f"files[{staged_as[name]}]; file names must be unique")
            staged_as.setdefault(name, position)
            resolved.append(full)
        return resolved

    # -- problems
    def _fail(self, line: int | None, path: FieldPath | None, message: str) -> NoReturn:
        field = format_path(path) if path else None
        raise SpecError(message, file=self.filename, line=line, field=field)

    def _add(self, path: FieldPath, message: str) -> None:
        line, inherited = self._line(path)
        if inherited:
            message += " (inherited from [defaults])"
        self.problems.append(_Problem(line, path, message))

    def _line(self, path: FieldPath) -> tuple[int, bool]:
        """The line for `path`; a task field that came from [defaults] points there."""
        if len(path) >= 3 and path[0] == "tasks" and isinstance(path[1], int):
            task = self.raw_tasks[path[1]] if path[1] < len(self.raw_tasks) else None
            rest = path[2:]
            if (isinstance(task, dict) and not _exists(task, rest)
                    and _exists(self.defaults, rest)):
                return line_for(self.lines, ("defaults", *rest)), True
        return line_for(self.lines, path), False

    def _add_validation(self, exc: ValidationError, prefix: FieldPath, data: Any) -> None:
        for error in exc.errors(include_url=False):
            if error["type"] == "too_short" and error.get("input"):
                continue  # items were dropped by their own errors, reported on their own
            loc: FieldPath = tuple(error["loc"])
            ctx = error.get("ctx") or {}
            if error["type"] == "spec":
                loc = (*loc, *ctx.get("spec_field", ()))
            if error["type"] != "missing":
                loc = existing_prefix(data, loc)
            path = (*prefix, *loc)
            self._add(path, pydantic_message(error, path))


# ----------------------------------------------------------------- messages


def _exists(data: Any, path: FieldPath) -> bool:
    for part in path:
        in_dict = isinstance(data, dict) and part in data
        in_list = isinstance(data, list | tuple) and isinstance(part, int) and part < len(data)
        if in_dict or in_list:
            data = data[part]
        else:
            return False
    return True


def existing_prefix(data: Any, loc: FieldPath) -> FieldPath:
    """The longest prefix of `loc` present in `data` (drops pydantic's type tags)."""
    for end in range(len(loc), 0, -1):
        if _exists(data, loc[:end]):
            return loc[:end]
    return ()


def _fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _allowed(parent: FieldPath) -> list[str]:
    if parent == ():
        return [f for f in _fields(JobSpec) if f != "base_dir"] + ["defaults"]
    if parent[-1] == "mpi":
        return _fields(MpiSpec)
    if parent == ("defaults",):
        return _fields(DefaultsSpec)
    if len(parent) == 2 and parent[0] == "tasks":
        return _fields(TaskGroupSpec)
    return []


def _unknown_field(name: str, allowed: list[str]) -> str:
    message = f"unknown field {name!r}"
    close = difflib.get_close_matches(name, allowed, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    if allowed:
        message += "; expected one of: " + ", ".join(allowed)
    return message


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str | int | float):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "float_type": "a number", "float_parsing": "a number",
    "tuple_type": "a list", "list_type": "a list",
    "dict_type": "a table (mapping)", "model_type": "a table (mapping)",
    "model_attributes_type": "a table (mapping)",
}


def pydantic_message(error: Any, path: FieldPath) -> str:
    kind: str = error["type"]
    value = error.get("input")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind == "spec":
        return str(error["msg"])
    if kind == "extra_forbidden":
        return _unknown_field(str(path[-1]), _allowed(path[:-1]))
    if kind == "missing":
        if path == ("name",):
            return 'a job needs a name, e.g. name = "nightly-sim"'
        if path == ("tasks",):
            return "no tasks: add at least one [[tasks]] entry with an id and a command"
        if path[-1] == "id":
            return "every task group needs an 'id'"
        return f"required field {path[-1]!r} is missing"
    if kind == "too_short" and path == ("tasks",):
        return "no tasks: add at least one [[tasks]] entry with an id and a command"
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "string_type" and path[-1:] == ("array",):
        return f'expected an array expression in quotes, e.g. "0-63", got {_show(value)}'
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_show(value)}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {_show(value)}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {_show(value)}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {_show(value)}"
    return str(error["msg"])
