"""Bad job specs: each is refused with the file, the line, the field path and the reason."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchpool.errors import SpecError
from batchpool.spec import load_spec


@dataclass(frozen=True)
class Bad:
    name: str
    filename: str
    text: str
    line: int | None
    field: str | None
    phrase: str


def _t(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


TASK = '[[tasks]]\nid = "a"\ncommand = "true"\n'

CASES = [
    # --- syntax
    Bad("toml syntax", "s.toml", _t('''
        name = "x"
        priority =
        '''), 2, None, "TOML syntax error"),
    Bad("toml syntax at end of document", "s.toml", _t('''
        name = "x"
        files = ["a",
        '''), 2, None, "TOML syntax error"),
    Bad("toml duplicate key", "s.toml", _t('''
        name = "x"
        name = "y"
        '''), 2, None, "Cannot overwrite"),
    Bad("yaml syntax", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            command: [true
        priority: 1
        '''), 5, None, "YAML syntax error"),
    Bad("yaml bad indentation", "s.yml", _t('''
        name: x
        tasks:
          - id: a
           command: b
        '''), 4, None, "YAML syntax error"),
    Bad("yaml duplicate key", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            command: "true"
            id: b
        '''), 5, "tasks[0].id", "duplicate key 'id' (first set on line 3)"),
    Bad("yaml top level is a list", "s.yaml", "- name: x\n", 1, None, "at the top level"),
    Bad("empty file", "s.yaml", "# nothing\n", 1, None, "the spec is empty"),
    # --- unknown fields
    Bad("unknown top-level field", "s.toml", _t('''
        name = "x"
        prioritty = 1
        ''') + TASK, 2, "prioritty", "did you mean 'priority'?"),
    Bad("unknown task field", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            command: "true"
            retries: 2
        '''), 5, "tasks[0].retries", "unknown field 'retries'"),
    Bad("unknown defaults field", "s.toml", _t('''
        name = "x"
        [defaults]
        max_attempts = 2
        retry = [1]
        ''') + TASK, 4, "defaults.retry", "unknown field 'retry'"),
    Bad("defaults cannot set command", "s.toml", _t('''
        name = "x"
        [defaults]
        command = "true"
        ''') + TASK, 3, "defaults.command", "cannot be set in [defaults]"),
    Bad("base_dir is not a user field", "s.toml", 'name = "x"\nbase_dir = "/"\n' + TASK,
        2, "base_dir", "unknown field 'base_dir'"),
    Bad("unknown mpi field", "s.toml", 'name = "x"\n' + TASK + 'mpi = { nodes = 2, gpus = 1 }\n',
        5, "tasks[0].mpi.gpus", "unknown field 'gpus'"),
    # --- types and ranges
    Bad("priority is a string", "s.toml", 'name = "x"\npriority = "high"\n' + TASK,
        2, "priority", "expected an integer, got 'high'"),
    Bad("priority out of range", "s.yaml", _t('''
        name: x
        priority: 5000
        tasks: [{id: a, command: "true"}]
        '''), 2, "priority", "at most 1000"),
    Bad("priority is a boolean", "s.toml", 'name = "x"\npriority = true\n' + TASK,
        2, "priority", "expected an integer, got true"),
    Bad("missing name", "s.toml", 'pool = "lab"\n' + TASK, 1, "name", "a job needs a name"),
    Bad("blank name", "s.toml", 'name = "  "\n' + TASK, 1, "name", "must not be blank"),
    Bad("no tasks", "s.toml", 'name = "x"\npriority = 1\n', 1, "tasks", "no tasks"),
    Bad("empty task list", "s.yaml", "name: x\n\ntasks: []\n", 3, "tasks", "no tasks"),
    Bad("task is not a table", "s.yaml", "name: x\ntasks:\n  - a\n", 3, "tasks[0]",
        "expected a table"),
    Bad("bad on_task_failure", "s.toml", 'name = "x"\non_task_failure = "stop"\n' + TASK,
        2, "on_task_failure", "expected 'continue' or 'cancel'"),
    Bad("bad task id characters", "s.toml", 'name = "x"\n[[tasks]]\nid = "map[1]"\ncommand = "x"\n',
        3, "tasks[0].id", "bad task id 'map[1]'"),
    Bad("missing task id", "s.toml", 'name = "x"\n[[tasks]]\ncommand = "x"\n',
        2, "tasks[0].id", "needs an 'id'"),
    Bad("depends_on is a string", "s.toml", 'name = "x"\n' + TASK + 'depends_on = "b"\n',
        5, "tasks[0].depends_on", "expected a list"),
    Bad("env value is a boolean", "s.toml", 'name = "x"\nenv = { A = "1", B = true }\n' + TASK,
        2, "env.B", "strings or numbers"),
    Bad("bad env name", "s.yaml", 'name: x\nenv:\n  "A-B": 1\ntasks: [{id: a, command: x}]\n',
        3, "env.A-B", "bad environment variable name"),
    Bad("mpi nodes = 0", "s.toml", 'name = "x"\n' + TASK + "mpi = { nodes = 0 }\n",
        5, "tasks[0].mpi.nodes", "at least 1"),
    Bad("mpi table form", "s.toml",
        'name = "x"\n' + TASK + "[tasks.mpi]\nnodes = 1\nranks_per_node = -2\n",
        7, "tasks[0].mpi.ranks_per_node", "at least 1"),
    Bad("exit code out of range in a multi-line array", "s.toml", _t('''
        name = "x"
        [defaults]
        retry_exit_codes = [
            1,
            300,
        ]
        ''') + TASK, 5, "defaults.retry_exit_codes[1]", "at most 255"),
    Bad("absolute output", "s.toml", 'name = "x"\n' + TASK + 'outputs = ["ok.txt", "/etc/x"]\n',
        5, "tasks[0].outputs[1]", "relative to the attempt directory"),
    # --- graph
    Bad("duplicate id", "s.toml", 'name = "x"\n' + TASK + TASK, 6, "tasks[1].id",
        "duplicate task id 'a'"),
    Bad("missing dependency", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            command: "true"
          - id: b
            command: "true"
            depends_on:
              - a
              - c
        '''), 9, "tasks[1].depends_on[1]", "depends on 'c', which is not a task group"),
    Bad("cycle", "s.toml", _t('''
        name = "x"
        [[tasks]]
        id = "a"
        command = "true"
        depends_on = ["b"]
        [[tasks]]
        id = "b"
        command = "true"
        depends_on = ["a"]
        '''), 5, "tasks[0].depends_on[0]", "dependency cycle: a -> b -> a"),
    Bad("longer cycle", "s.yaml", _t('''
        name: x
        tasks:
          - {id: start, command: "true"}
          - {id: c, command: "true", depends_on: [start, a]}
          - {id: a, command: "true", depends_on: [b]}
          - {id: b, command: "true", depends_on: [c]}
        '''), 4, "tasks[1].depends_on[1]", "dependency cycle: c -> a -> b -> c"),
    Bad("self dependency", "s.toml", 'name = "x"\n' + TASK + 'depends_on = ["a"]\n',
        5, "tasks[0].depends_on[0]", "depends on itself"),
    # --- arrays
    Bad("array range backwards", "s.toml", 'name = "x"\n' + TASK + 'array = "5-1"\n',
        5, "tasks[0].array", "bad array range '5-1'"),
    Bad("array item not a number", "s.yaml",
        "name: x\ntasks:\n  - id: a\n    command: x\n    array: a-b\n",
        5, "tasks[0].array", "bad array item 'a-b'"),
    Bad("array step zero", "s.toml", 'name = "x"\n' + TASK + 'array = "0-10:0"\n',
        5, "tasks[0].array", "step must be >= 1"),
    Bad("empty array", "s.toml", 'name = "x"\n' + TASK + 'array = ""\n',
        5, "tasks[0].array", "empty array expression"),
    Bad("bad concurrency limit", "s.toml", 'name = "x"\n' + TASK + 'array = "0-9%x"\n',
        5, "tasks[0].array", "bad concurrency limit"),
    Bad("array listing an index twice", "s.toml", 'name = "x"\n' + TASK + 'array = "0-9,5"\n',
        5, "tasks[0].array", "lists some indices twice"),
    Bad("array is a number", "s.toml", 'name = "x"\n' + TASK + "array = 64\n",
        5, "tasks[0].array", 'expected an array expression in quotes, e.g. "0-63", got 64'),
    Bad("tasks written as an inline array", "s.toml", _t('''
        name = "x"
        tasks = [
          { id = "a", command = "x" },
          { id = "b", command = "x", colour = 1 },
        ]
        '''), 4, "tasks[1].colour", "unknown field 'colour'"),
    # --- durations and counts
    Bad("bad duration", "s.toml", 'name = "x"\ntimeout = "10 parsecs"\n' + TASK,
        2, "timeout", "bad duration '10 parsecs'"),
    Bad("negative timeout in defaults", "s.yaml", _t('''
        name: x
        defaults:
          timeout: -5
        tasks: [{id: a, command: x}]
        '''), 3, "defaults.timeout", "must be positive"),
    Bad("timeout is a list", "s.toml", 'name = "x"\n' + TASK + "timeout = [1]\n",
        5, "tasks[0].timeout", "expected a duration"),
    Bad("max_attempts = 0", "s.toml", 'name = "x"\n' + TASK + "max_attempts = 0\n",
        5, "tasks[0].max_attempts", "at least 1"),
    # --- command / call / params rules
    Bad("both command and call", "s.toml", 'name = "x"\n' + TASK + 'call = "m:f"\n',
        5, "tasks[0].call", "not both"),
    Bad("neither command nor call", "s.toml", 'name = "x"\n\n[[tasks]]\nid = "a"\n',
        3, "tasks[0]", "needs 'command'"),
    Bad("bad call", "s.toml", 'name = "x"\n[[tasks]]\nid = "a"\ncall = "pi.count"\n',
        4, "tasks[0].call", "expected 'module:function'"),
    Bad("args without call", "s.toml", 'name = "x"\n' + TASK + "args = [1, 2]\n",
        5, "tasks[0].args", "only used with 'call'"),
    Bad("args without call, inherited", "s.toml", _t('''
        name = "x"
        [defaults]
        args = [1]
        ''') + TASK, 3, "tasks[0].args", "inherited from [defaults]"),
    Bad("array and params", "s.toml",
        'name = "x"\n' + TASK + 'array = "0-3"\nparams = { n = [1] }\n',
        6, "tasks[0].params", "cannot be combined"),
    Bad("empty params list", "s.toml", 'name = "x"\n' + TASK + "params = { n = [1], alpha = [] }\n",
        5, "tasks[0].params.alpha", "non-empty list"),
    Bad("params value not a scalar", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            command: x {n}
            params:
              n:
                - 1
                - [2, 3]
        '''), 8, "tasks[0].params.n[1]", "strings, numbers or booleans"),
    Bad("params name reserved", "s.toml", 'name = "x"\n' + TASK + "params = { index = [1] }\n",
        5, "tasks[0].params.index", "reserved"),
    Bad("on_every_node with array", "s.toml",
        'name = "x"\n' + TASK + 'array = "0-3"\non_every_node = true\n',
        6, "tasks[0].on_every_node", "cannot be combined with 'array'"),
    # --- placeholders
    Bad("unknown placeholder", "s.toml",
        'name = "x"\n[[tasks]]\nid = "a"\narray = "0-3"\ncommand = "run --seed {sed}"\n',
        5, "tasks[0].command", "unknown placeholder {sed}"),
    Bad("index in a plain group", "s.yaml",
        "name: x\ntasks:\n  - id: a\n    command: run --seed {index}\n",
        4, "tasks[0].command", "{index} is only defined for groups with"),
    Bad("placeholder inside quotes", "s.yaml", _t('''
        name: x
        tasks:
          - id: a
            params: {v: ["x y"]}
            command: echo "value={v}"
        '''), 5, "tasks[0].command", "inside double quotes"),
    Bad("unknown placeholder in kwargs", "s.toml",
        'name = "x"\n[[tasks]]\nid = "a"\ncall = "m:f"\nkwargs = { a = 1, seed = "{index}" }\n',
        5, "tasks[0].kwargs.seed", "{index} is only defined"),
    # --- files
    Bad("missing resource file", "s.toml", _t('''
        name = "x"
        files = [
            "here.txt",
            "missing.py",
        ]
        ''') + TASK, 4, "files[1]", "resource file 'missing.py' not found"),
    Bad("resource is a directory", "s.yaml",
        "name: x\nfiles: [adir]\ntasks: [{id: a, command: x}]\n",
        2, "files[0]", "not a regular file"),
    Bad("two resource files with one name", "s.yaml",
        "name: x\nfiles:\n  - here.txt\n  - adir/here.txt\ntasks: [{id: a, command: x}]\n",
        4, "files[1]", "would be staged as 'here.txt', like files[0]"),
    # --- JSON, read as YAML (tabs are fine)
    Bad("json unknown field", "s.json",
        '{\n\t"name": "x",\n\t"tasks": [\n'
        '\t\t{"id": "a", "command": "x", "colour": "red"}\n\t]\n}\n',
        4, "tasks[0].colour", "unknown field 'colour'"),
    Bad("json syntax", "s.json", '{\n  "name": "x",\n  "tasks": [\n}\n',
        4, None, "JSON syntax error"),
    # --- several problems: the first one in the file wins
    Bad("first problem in file order", "s.toml", _t('''
        name = "x"
        [[tasks]]
        id = "a"
        command = "true"
        max_attempts = 0
        [defaults]
        timeout = "soon"
        '''), 5, "tasks[0].max_attempts", "at least 1"),
]


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    (tmp_path / "here.txt").write_text("ok\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "here.txt").write_text("also\n")
    return tmp_path


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_spec(spec_dir: Path, case: Bad) -> None:
    path = spec_dir / case.filename
    path.write_text(case.text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    error = info.value
    assert (error.file, error.line, error.field) == (str(path), case.line, case.field), error
    assert case.phrase in error.message
    assert case.phrase in str(error)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30
    assert {case.filename.rsplit(".", 1)[1] for case in CASES} >= {"toml", "yaml", "yml", "json"}


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "job.txt"
    path.write_text('name = "x"\n')
    with pytest.raises(SpecError, match=r"unknown spec format '\.txt'") as info:
        load_spec(path)
    assert info.value.file == str(path)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.toml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b'name = "x"\n# \xff\n')
    with pytest.raises(SpecError, match="not UTF-8") as info:
        load_spec(path)
    assert info.value.line == 2


def test_file_given_as_str_is_reported_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("job.toml").write_text('name = "x"\npriority = "high"\n' + TASK)
    with pytest.raises(SpecError) as info:
        load_spec("job.toml")
    assert str(info.value).startswith("job.toml:2: priority: expected an integer")
