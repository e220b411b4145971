"""The job spec as typed, immutable values.

`JobSpec` holds task *groups* (`TaskGroupSpec`), never per-member lists: an array of a
million members costs a few integers, and `TaskGroupSpec.member` computes any member on
demand. Specs are persisted with ``model_dump_json`` and read back with
``JobSpec.model_validate_json``; validation is deterministic and touches no files, so
this round-trips exactly (defaults are merged and files resolved by ``load.py``, before
the model is built).

Validation errors that concern a sub-field carry it in the error's ``ctx["spec_field"]``
(a path relative to the error's ``loc``), which ``load.py`` turns into a file line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from batchpool.durations import parse_duration
from batchpool.spec.arrays import IndexSet
from batchpool.spec.placeholders import IDENTIFIER, RESERVED_NAMES, check_template

ID_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
CALL_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def spec_error(message: str, *path: str | int) -> PydanticCustomError:
    """A validation error about `path` (relative to where pydantic reports the error)."""
    return PydanticCustomError("spec", message, {"spec_field": tuple(path)})


def _type_name(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "a list", tuple: "a list", dict: "a table", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------- field types


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration like '90s', '10m' or '2h', got {_type_name(value)}")
    return parse_duration(value)


def _env(value: Any) -> Any:
    if not isinstance(value, dict):
        raise spec_error(f"expected a table of NAME = value, got {_type_name(value)}")
    out: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise spec_error(
                f"bad environment variable name {name!r}: use letters, digits and _", name
            )
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise spec_error(
                f"environment values must be strings or numbers, got {_type_name(item)}", name
            )
        out[name] = item if isinstance(item, str) else str(item)
    return out


def _json_value(value: Any, path: tuple[str | int, ...] = ()) -> None:
    """Refuse what JSON cannot carry back unchanged (dates, NaN, non-string keys)."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise spec_error(f"{value} cannot be stored; use a finite number", *path)
        return
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _json_value(item, (*path, position))
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise spec_error(f"keys must be strings, got {key!r}", *path)
            _json_value(item, (*path, key))
        return
    raise spec_error(
        f"expected a string, number, boolean, list or table, got {_type_name(value)}", *path
    )


Duration = Annotated[float | None, BeforeValidator(_duration)]
Env = Annotated[dict[str, str], BeforeValidator(_env)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MpiSpec(_Frozen):
    """An MPI task: whole nodes, ``nodes * ranks_per_node`` processes under mpiexec."""

    nodes: StrictInt = Field(ge=1)
    ranks_per_node: StrictInt = Field(default=1, ge=1)


class ShardsSpec(_Frozen):
    """``shards``: one task per input file (``glob`` or ``files``) or per row block of an
    array (``npy`` cut in ``count``). Paths are absolute once loaded (see load.py)."""

    glob: StrictStr | None = None
    files: tuple[StrictStr, ...] = ()
    npy: StrictStr | None = None
    count: StrictInt | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _check_kind(self) -> ShardsSpec:
        given = [name for name in ("glob", "npy") if getattr(self, name) is not None]
        if self.npy is not None and self.count is None:
            raise spec_error("'npy' needs 'count', the number of row blocks", "count")
        if self.npy is None and self.count is not None:
            raise spec_error("'count' only goes with 'npy'", "count")
        if self.glob is None and self.npy is None and not self.files:
            raise spec_error("expected 'glob', 'npy' (with 'count') or 'files'")
        if len(given) > 1:
            raise spec_error("set one of 'glob' and 'npy'", "npy")
        if self.npy is not None and self.files:
            raise spec_error("set one of 'files' and 'npy'", "npy")
        return self

    @property
    def size(self) -> int:
        return self.count if self.npy is not None and self.count else len(self.files)

    def path_name(self, position: int) -> str:
        """The shard's file name in the attempt directory (``{shard_path}``)."""
        if self.npy is not None:
            return f"{Path(self.npy).stem}-{position:05d}.npy"
        return Path(self.files[position]).name


@dataclass(frozen=True)
class Member:
    """One task of a group: its id, its array index (or grid position) and its params."""

    task_id: str
    index: int | None
    params: dict[str, Any] = field(default_factory=dict)


def _json_args(value: Any) -> Any:
    if isinstance(value, list | tuple | dict):
        _json_value(value)
    return value


def _outputs(value: tuple[str, ...]) -> tuple[str, ...]:
    for position, pattern in enumerate(value):
        if not pattern.strip():
            raise spec_error("an output pattern must not be empty", position)
        if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
            raise spec_error(
                f"output {pattern!r} must be a glob relative to the attempt directory "
                "(no leading / and no ..)",
                position,
            )
    return value


JsonArgs = Annotated[tuple[Any, ...], BeforeValidator(_json_args)]
JsonKwargs = Annotated[dict[StrictStr, Any], BeforeValidator(_json_args)]
Outputs = Annotated[tuple[StrictStr, ...], AfterValidator(_outputs)]
ExitCode = Annotated[StrictInt, Field(ge=0, le=255)]

#: Fields a task group must set itself; ``[defaults]`` may not.
NOT_DEFAULTABLE: tuple[str, ...] = ("id", "command", "call", "array", "params", "depends_on",
                                    "shards")
#: The ``call`` of an Executor session's open group (its calls come from the process).
EXECUTOR_CALL = "batchpool.executor:call"
#: The placeholders of a ``shards`` group, besides ``{index}`` (= ``{shard}``).
SHARD_PLACEHOLDERS: dict[str, tuple[()]] = {"shard": (), "shard_path": ()}


class TaskGroupSpec(_Frozen):
    """One ``[[tasks]]`` entry (defaults already merged in): a task, an array or a grid."""

    id: StrictStr
    command: StrictStr | None = None
    call: StrictStr | None = None
    args: JsonArgs = ()
    kwargs: JsonKwargs = {}
    array: StrictStr | None = None
    params: dict[StrictStr, tuple[Any, ...]] = {}
    depends_on: tuple[StrictStr, ...] = ()
    env: Env = {}
    timeout: Duration = None
    max_attempts: StrictInt = Field(default=3, ge=1)
    retry_exit_codes: tuple[ExitCode, ...] = ()
    outputs: Outputs = ()
    #: ``true``: one task per node of the pool, fixed when the job starts (the node
    #: names are then stored here, so a resumed job keeps them); or those node names.
    on_every_node: StrictBool | tuple[StrictStr, ...] = False
    shards: ShardsSpec | None = None
    mpi: MpiSpec | None = None

    _index_set: IndexSet | None = PrivateAttr(default=None)
    _size: int = PrivateAttr(default=1)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"bad task id {value!r}: start with a letter or _, then letters, digits, "
                "_, . or - (e.g. 'map', 'step_2')"
            )
        return value

    @field_validator("command")
    @classmethod
    def _check_command(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("command must not be empty")
        return value

    @field_validator("call")
    @classmethod
    def _check_call(cls, value: str | None) -> str | None:
        if value is not None and not CALL_PATTERN.fullmatch(value):
            raise ValueError(f"bad call {value!r}: expected 'module:function', e.g. 'pi:count'")
        return value

    @field_validator("array")
    @classmethod
    def _check_array(cls, value: str | None) -> str | None:
        if value is not None:
            IndexSet.parse(value)  # its ValueError says what is wrong
        return value

    @field_validator("params", mode="before")
    @classmethod
    def _check_params(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        for name, values in value.items():
            if not isinstance(name, str) or not IDENTIFIER.fullmatch(name):
                raise spec_error(
                    f"bad params name {name!r}: use letters, digits and _ so that "
                    f"{{name}} can refer to it",
                    str(name),
                )
            if name in RESERVED_NAMES:
                raise spec_error(f"params name {name!r} is reserved for a placeholder", name)
            if not isinstance(values, list | tuple):
                raise spec_error(
                    f"expected a list of values, got {_type_name(values)}", name
                )
            if not values:
                raise spec_error("expected a non-empty list of values", name)
            for position, item in enumerate(values):
                if isinstance(item, float) and not math.isfinite(item):
                    raise spec_error(f"{item} cannot be stored; use a finite number",
                                     name, position)
                if not isinstance(item, str | int | float):  # bool is an int
                    raise spec_error(
                        "params values must be strings, numbers or booleans, "
                        f"got {_type_name(item)}",
                        name,
                        position,
                    )
        return value

    @model_validator(mode="after")
    def _check_group(self) -> TaskGroupSpec:
        if self.command is None and self.call is None:
            raise spec_error("a task needs 'command' (a shell command) or 'call' (module:function)")
        if self.command is not None and self.call is not None:
            raise spec_error("set either 'command' or 'call', not both", "call")
        if self.call is None:
            for name in ("args", "kwargs"):
                if getattr(self, name):
                    raise spec_error(f"'{name}' is only used with 'call', not with 'command'",
                                     name)
        if self.array is not None and self.params:
            raise spec_error("'array' and 'params' cannot be combined; use one of them",
                             "params")
        if self.shards is not None:
            for name in ("array", "params", "on_every_node", "mpi"):
                if getattr(self, name):
                    raise spec_error(f"'shards' makes one task per shard and cannot be "
                                     f"combined with '{name}'", name)
        if self.on_every_node:
            for name in ("array", "params", "mpi"):
                if getattr(self, name):
                    raise spec_error(
                        f"'on_every_node' runs one task per node and cannot be combined "
                        f"with '{name}'",
                        "on_every_node",
                    )
        if isinstance(self.on_every_node, tuple):
            if not self.on_every_node:
                raise spec_error("expected true or a non-empty list of node names",
                                 "on_every_node")
            if len(set(self.on_every_node)) != len(self.on_every_node):
                raise spec_error("a node is listed twice", "on_every_node")
        indexed = self.indexed
        names = SHARD_PLACEHOLDERS if self.shards is not None else self.params
        if self.command is not None:
            problem = check_template(self.command, indexed, names)
            if problem:
                raise spec_error(problem, "command")
        for path, text in _strings(self.args, ("args",)) + _strings(self.kwargs, ("kwargs",)):
            problem = check_template(text, indexed, names, shell=False)
            if problem:
                raise spec_error(problem, *path)
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._index_set = IndexSet.parse(self.array) if self.array is not None else None
        if self._index_set is not None:  # computed once: the scheduler asks on every dispatch
            self._size = len(self._index_set)
        elif self.on_every_node is not False:
            self._size = len(self.on_every_node) if isinstance(self.on_every_node, tuple) else 0
        elif self.shards is not None:
            self._size = self.shards.size
        else:
            self._size = math.prod(len(values) for values in self.params.values())

    # ------------------------------------------------------------- members
    @property
    def index_set(self) -> IndexSet | None:
        """The parsed ``array`` expression, or ``None``."""
        return self._index_set

    @property
    def indexed(self) -> bool:
        """True for arrays and params grids (whose members have an ``{index}``)."""
        return (self.array is not None or bool(self.params) or self.on_every_node is not False
                or self.shards is not None)

    @property
    def pinned(self) -> tuple[str, ...] | None:
        """For ``on_every_node``: the node each member must run on (by position)."""
        return self.on_every_node if isinstance(self.on_every_node, tuple) else None

    @property
    def size(self) -> int:
        """Number of tasks: the array's length, the grid's size, else 1."""
        return self._size

    @property
    def max_running(self) -> int | None:
        """The array's ``%N`` limit, if any."""
        return self._index_set.limit if self._index_set is not None else None

    def _check_position(self, position: int) -> IndexSet | None:
        """The index set, once `position` is known to be valid.

        Reads the private attributes through ``__pydantic_private__`` in one lookup: the
        scheduler calls this for every task it starts, and pydantic's ``__getattr__`` for
        each private attribute costs more than the rest of the call.
        """
        private = self.__pydantic_private__
        assert private is not None
        if not 0 <= position < private["_size"]:
            raise IndexError(f"group {self.id!r} has no member at position {position}")
        index_set: IndexSet | None = private["_index_set"]
        return index_set

    def task_id(self, position: int) -> str:
        """``reduce``, ``map[7]`` (array index) or ``sweep[3]`` (grid position)."""
        index_set = self._check_position(position)
        if index_set is not None:
            return f"{self.id}[{index_set.nth(position)}]"
        if self.params or self.on_every_node is not False or self.shards is not None:
            return f"{self.id}[{position}]"
        return self.id

    def member(self, position: int) -> Member:
        """Member `position` (0-based, in ascending index / row-major grid order)."""
        index_set = self._check_position(position)
        if index_set is not None:
            index = index_set.nth(position)
            return Member(f"{self.id}[{index}]", index, {})
        if self.params:
            chosen: dict[str, Any] = {}
            rest = position
            for name, values in reversed(self.params.items()):
                rest, offset = divmod(rest, len(values))
                chosen[name] = values[offset]
            return Member(f"{self.id}[{position}]", position,
                          {name: chosen[name] for name in self.params})
        if self.on_every_node is not False:
            return Member(f"{self.id}[{position}]", position, {})
        if self.shards is not None:
            return Member(f"{self.id}[{position}]", position,
                          {"shard": position, "shard_path": self.shards.path_name(position)})
        return Member(self.id, None, {})


#: The ``[defaults]`` table: the task fields that may be defaulted, validated the same way.
DefaultsSpec: type[BaseModel] = create_model(
    "DefaultsSpec",
    __base__=_Frozen,
    **{  # type: ignore[call-overload]
        name: (info.annotation, info)
        for name, info in TaskGroupSpec.model_fields.items()
        if name not in NOT_DEFAULTABLE
    },
)


def _strings(value: Any, path: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        return [(path, value)]
    if isinstance(value, list | tuple):
        return [s for i, item in enumerate(value) for s in _strings(item, (*path, i))]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in _strings(item, (*path, key))]
    return []


class JobSpec(_Frozen):
    """A whole job: policies plus task groups. ``files`` are absolute once loaded."""

    name: StrictStr = Field(min_length=1)
    pool: StrictStr | None = None
    priority: StrictInt = Field(default=0, ge=-1000, le=1000)
    timeout: Duration = None
    on_task_failure: Literal["continue", "cancel"] = "continue"
    env: Env = {}
    files: tuple[StrictStr, ...] = ()
    base_dir: StrictStr = "."
    tasks: tuple[TaskGroupSpec, ...] = Field(min_length=1)

    _groups: dict[str, TaskGroupSpec] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the job name must not be blank")
        return value

    @model_validator(mode="after")
    def _check_graph(self) -> JobSpec:
        problem = graph_problem(self.tasks)
        if problem is not None:
            raise spec_error(problem[1], *problem[0])
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._groups = {group.id: group for group in self.tasks}

    def group(self, group_id: str) -> TaskGroupSpec:
        """The task group called `group_id`; ``KeyError`` if there is none."""
        return self._groups[group_id]

    @property
    def executor_session(self) -> bool:
        """Whether this is an Executor's job (whose calls live only in its process)."""
        return any(group.call == EXECUTOR_CALL for group in self.tasks)

    @property
    def unplaced(self) -> bool:
        """Whether an ``on_every_node = true`` group still waits for the pool's nodes."""
        return any(group.on_every_node is True for group in self.tasks)

    def on_nodes(self, names: tuple[str, ...]) -> JobSpec:
        """This spec with every ``on_every_node = true`` group fixed to these nodes."""
        tasks = tuple(
            TaskGroupSpec.model_validate(
                {**group.model_dump(), "on_every_node": names}) if group.on_every_node is True
            else group for group in self.tasks)
        return JobSpec.model_validate({**self.model_dump(), "tasks": [
            t.model_dump() for t in tasks]})


def graph_problem(
    tasks: tuple[TaskGroupSpec, ...],
) -> tuple[tuple[str | int, ...], str] | None:
    """The first problem with ids and dependencies, as (field path, message), or None."""
    first: dict[str, int] = {}
    for position, group in enumerate(tasks):
        if group.id in first:
            return (("tasks", position, "id"),
                    f"duplicate task id {group.id!r} (already used by tasks[{first[group.id]}])")
        first[group.id] = position
    for position, group in enumerate(tasks):
        for number, dep in enumerate(group.depends_on):
            where = ("tasks", position, "depends_on", number)
            if dep == group.id:
                return where, f"task group {dep!r} depends on itself"
            if dep not in first:
                known = ", ".join(repr(g.id) for g in tasks)
                return where, f"depends on {dep!r}, which is not a task group (groups: {known})"
    cycle = _find_cycle(tasks, first)
    if cycle is None:
        return None
    start = min(range(len(cycle) - 1), key=lambda i: first[cycle[i]])
    ring = cycle[start:-1] + cycle[:start] + [cycle[start]]
    group = tasks[first[ring[0]]]
    number = group.depends_on.index(ring[1])
    return (("tasks", first[ring[0]], "depends_on", number),
            f"dependency cycle: {' -> '.join(ring)}")


def _find_cycle(tasks: tuple[TaskGroupSpec, ...], first: Mapping[str, int]) -> list[str] | None:
    """A cycle as [a, b, ..., a] following depends_on edges, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in tasks:
        if root.id in state:
            continue
        path: list[str] = [root.id]
        iters = [iter(root.depends_on)]
        state[root.id] = 1
        while iters:
            dep = next(iters[-1], None)
            if dep is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state:
                state[dep] = 1
                path.append(dep)
                iters.append(iter(tasks[first[dep]].depends_on))
    return None
