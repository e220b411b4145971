"""Good job specs: loading, defaults, members, big arrays, JSON round-trip, line lookup."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import batchpool.spec
from batchpool.errors import SpecError
from batchpool.spec import (
    JobSpec,
    Member,
    MpiSpec,
    TaskGroupSpec,
    load_spec,
    parse_spec_text,
)
from batchpool.spec.locate import format_path, line_for, toml_lines, yaml_lines
from batchpool.spec.model import NOT_DEFAULTABLE, DefaultsSpec

SPECS = Path(__file__).parent / "specs"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_public_api() -> None:
    assert sorted(batchpool.spec.__all__) == sorted(
        ["JobSpec", "TaskGroupSpec", "MpiSpec", "Member", "load_spec", "parse_spec_text",
         "render_command"]
    )


# ----------------------------------------------------------------- the contract's example


def test_contract_example(tmp_path: Path) -> None:
    shutil.copy(SPECS / "contract_example.toml", tmp_path / "job.toml")
    (tmp_path / "pi.py").write_text("def count(seed, samples):\n    return 0\n")
    spec = load_spec(tmp_path / "job.toml")

    assert spec.name == "mc-pi"
    assert spec.pool == "lab"
    assert spec.priority == 0
    assert spec.timeout == 7200.0
    assert spec.on_task_failure == "continue"
    assert spec.env == {"OMP_NUM_THREADS": "1"}
    assert spec.files == (str(tmp_path / "pi.py"),)
    assert spec.base_dir == str(tmp_path)
    assert [g.id for g in spec.tasks] == ["map", "reduce", "sweep", "count", "gflops", "solver"]

    for group in spec.tasks:  # [defaults] reached every group
        assert group.max_attempts == 3
        assert group.timeout == 600.0
        assert group.retry_exit_codes == ()

    map_ = spec.group("map")
    assert map_.size == 64
    assert map_.outputs == ("part.json",)
    assert map_.max_running is None
    assert map_.task_id(7) == "map[7]"

    reduce = spec.group("reduce")
    assert reduce.depends_on == ("map",)
    assert reduce.size == 1
    assert reduce.task_id(0) == "reduce"
    assert reduce.member(0) == Member("reduce", None, {})

    sweep = spec.group("sweep")
    assert sweep.params == {"alpha": (0.1, 0.5, 0.9), "n": (100, 1000)}
    assert sweep.size == 6

    count = spec.group("count")
    assert count.call == "pi:count"
    assert count.command is None
    assert count.kwargs == {"seed": "{index}", "samples": 2000000}
    assert count.size == 64

    assert spec.group("gflops").on_every_node is True
    assert spec.group("solver").mpi == MpiSpec(nodes=2, ranks_per_node=2)


def test_the_three_formats_agree() -> None:
    toml_spec = load_spec(SPECS / "contract_example.toml")
    assert load_spec(SPECS / "contract_example.yaml") == toml_spec
    assert load_spec(SPECS / "contract_example.json") == toml_spec


def test_json_round_trip() -> None:
    spec = load_spec(SPECS / "contract_example.toml")
    again = JobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.group("map").index_set == spec.group("map").index_set
    assert again.group("sweep").member(3) == spec.group("sweep").member(3)


def test_round_trip_does_not_touch_files_or_defaults(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    path = write(tmp_path, "job.toml", '''
        name = "j"
        files = ["data.txt"]
        [defaults]
        env = { A = "1" }
        [[tasks]]
        id = "t"
        command = "true"
        env = { B = 2 }
        ''')
    dumped = load_spec(path).model_dump_json()
    (tmp_path / "data.txt").unlink()  # a stored spec stays valid when its files are gone
    again = JobSpec.model_validate_json(dumped)
    assert again.files == (str(tmp_path / "data.txt"),)
    assert again.group("t").env == {"A": "1", "B": "2"}


# ----------------------------------------------------------------- defaults


def test_defaults_merge_under_each_task(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", '''
        name: merge
        defaults:
          max_attempts: 5
          timeout: 90s
          retry_exit_codes: [75]
          env: {A: base, B: base}
          outputs: ["*.out"]
        tasks:
          - id: plain
            command: "true"
          - id: custom
            command: "true"
            max_attempts: 1
            env: {B: mine, C: 3}
            outputs: []
        ''')
    spec = load_spec(path)
    plain, custom = spec.tasks
    assert (plain.max_attempts, plain.timeout, plain.retry_exit_codes) == (5, 90.0, (75,))
    assert plain.env == {"A": "base", "B": "base"}
    assert plain.outputs == ("*.out",)
    assert (custom.max_attempts, custom.timeout) == (1, 90.0)
    assert custom.env == {"A": "base", "B": "mine", "C": "3"}
    assert custom.outputs == ()


def test_without_defaults_the_model_defaults_apply(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "job.toml", '''
        name = "bare"
        [[tasks]]
        id = "t"
        command = "true"
        '''))
    group = spec.tasks[0]
    assert (group.max_attempts, group.timeout, group.env, group.outputs) == (3, None, {}, ())
    assert (spec.priority, spec.timeout, spec.pool, spec.files) == (0, None, None, ())


def test_defaults_model_mirrors_task_fields() -> None:
    task_fields = set(TaskGroupSpec.model_fields) - set(NOT_DEFAULTABLE)
    assert set(DefaultsSpec.model_fields) == task_fields


def test_env_numbers_become_strings(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "job.toml", '''
        name = "env"
        env = { THREADS = 4, RATIO = 0.5, NAME = "x" }
        [[tasks]]
        id = "t"
        command = "true"
        '''))
    assert spec.env == {"THREADS": "4", "RATIO": "0.5", "NAME": "x"}


def test_yaml_and_json_exponent_numbers_are_floats(tmp_path: Path) -> None:
    yaml_spec = load_spec(write(tmp_path, "job.yaml", '''
        name: floats
        tasks:
          - {id: a, call: "m:f", kwargs: {samples: 2e6, eps: 1.5E-3, tag: "2e6"}}
        '''))
    assert yaml_spec.tasks[0].kwargs == {"samples": 2e6, "eps": 1.5e-3, "tag": "2e6"}
    json_spec = load_spec(write(tmp_path, "job.json", '''
        {"name": "floats", "tasks": [{"id": "a", "call": "m:f", "args": [2e6, 1E+3]}]}
        '''))
    assert json_spec.tasks[0].args == (2e6, 1000.0)


def test_windows_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b'name = "x"\r\n[[tasks]]\r\nid = "a"\r\ncommand = "{bad}"\r\n')
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert (info.value.line, info.value.field) == (4, "tasks[0].command")


# ----------------------------------------------------------------- members


def group(**fields: object) -> TaskGroupSpec:
    return TaskGroupSpec.model_validate({"id": "g", "command": "run", **fields})


def test_array_member_details() -> None:
    g = group(array="1,3,10-20:5%2")
    assert g.size == 5
    assert g.max_running == 2
    assert [g.task_id(p) for p in range(5)] == ["g[1]", "g[3]", "g[10]", "g[15]", "g[20]"]
    assert g.member(2) == Member("g[10]", 10, {})
    assert g.index_set is g.index_set
    with pytest.raises(IndexError):
        g.member(5)
    with pytest.raises(IndexError):
        g.task_id(-1)


def test_params_members_are_row_major_in_written_order() -> None:
    g = group(command="m {b} {a} {c}", params={"b": [1, 2], "a": ["x", "y", "z"], "c": [True]})
    assert g.size == 6
    assert g.max_running is None
    assert g.index_set is None
    members = [g.member(p) for p in range(g.size)]
    assert [m.params for m in members] == [
        {"b": 1, "a": "x", "c": True},
        {"b": 1, "a": "y", "c": True},
        {"b": 1, "a": "z", "c": True},
        {"b": 2, "a": "x", "c": True},
        {"b": 2, "a": "y", "c": True},
        {"b": 2, "a": "z", "c": True},
    ]
    assert list(members[0].params) == ["b", "a", "c"]
    assert members[3] == Member("g[3]", 3, {"b": 2, "a": "x", "c": True})
    assert g.task_id(3) == "g[3]"


def test_plain_group_has_one_member() -> None:
    g = group()
    assert (g.size, g.max_running, g.index_set, g.indexed) == (1, None, None, False)
    assert g.member(0) == Member("g", None, {})
    with pytest.raises(IndexError):
        g.member(1)


def test_million_member_array_is_cheap(tmp_path: Path) -> None:
    path = write(tmp_path, "big.toml", '''
        name = "big"
        [[tasks]]
        id = "map"
        command = "work {index}"
        array = "0-999999%64"
        ''')
    started = time.perf_counter()
    spec = load_spec(path)
    g = spec.group("map")
    assert g.size == 1_000_000
    assert g.task_id(999_999) == "map[999999]"
    again = JobSpec.model_validate_json(spec.model_dump_json())
    elapsed = time.perf_counter() - started
    assert again == spec
    assert g.max_running == 64
    assert elapsed < 0.5, elapsed
    assert len(spec.model_dump_json()) < 2000  # no per-member data anywhere


def test_group_lookup() -> None:
    spec = load_spec(SPECS / "contract_example.toml")
    assert spec.group("sweep") is spec.tasks[2]
    with pytest.raises(KeyError):
        spec.group("nope")


def test_models_are_frozen() -> None:
    spec = load_spec(SPECS / "contract_example.toml")
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        spec.tasks[0].array = "0-1"  # type: ignore[misc]


def test_spec_built_in_code() -> None:
    spec = JobSpec(name="api", tasks=[{"id": "t", "call": "m:f", "args": [1, "{task_id}"]}])
    assert spec.base_dir == "."
    assert spec.tasks[0].args == (1, "{task_id}")
    with pytest.raises(ValueError, match="dependency cycle: a -> b -> a"):
        JobSpec(name="api", tasks=[
            {"id": "a", "command": "x", "depends_on": ["b"]},
            {"id": "b", "command": "x", "depends_on": ["a"]},
        ])


# ----------------------------------------------------------------- placeholders at load time


def test_placeholders_that_load(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "ok.toml", '''
        name = "ph"
        [[tasks]]
        id = "plain"
        command = "echo {task_id} {job_id} {attempt} {node} {{index}} ${HOME} $PATH ${index}"
        [[tasks]]
        id = "grid"
        command = "echo {index} {x}; awk '{ print $1 }' f; find . -exec rm {} +"
        params = { x = [1] }
        '''))
    assert spec.group("plain").command is not None


def test_files_resolve_against_the_spec_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "real.py").write_text("")
    (tmp_path / "link.py").symlink_to(tmp_path / "sub" / "real.py")
    outside = tmp_path / "abs.txt"
    outside.write_text("")
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    path = write(spec_dir, "job.yaml", f'''
        name: files
        files: [../sub/real.py, ../link.py, {outside}]
        tasks: [{{id: t, command: "true"}}]
        ''')
    spec = load_spec(path)
    assert spec.files == (
        str(tmp_path / "sub" / "real.py"),
        str(tmp_path / "link.py"),  # the link keeps its own name
        str(outside),
    )
    assert spec.base_dir == str(spec_dir)


def test_parse_spec_text_directly(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("")
    spec = parse_spec_text(
        'name = "t"\nfiles = ["in.txt"]\n[[tasks]]\nid = "a"\ncommand = "true"\n',
        "<inline>", "toml", tmp_path,
    )
    assert spec.files == (str(tmp_path / "in.txt"),)
    with pytest.raises(SpecError) as info:
        parse_spec_text("name: t\npriority: x\ntasks: []\n", "<inline>", "yaml", tmp_path)
    assert (info.value.file, info.value.line, info.value.field) == ("<inline>", 2, "priority")


def test_yaml_helper_keys_are_unknown_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "job.yaml", '''
        name: anchors
        x-common: &common
          command: "true"
        tasks:
          - <<: *common
            id: a
        ''')
    with pytest.raises(SpecError, match="unknown field 'x-common'") as info:
        load_spec(path)
    assert (info.value.line, info.value.field) == (2, "x-common")


def test_yaml_merge_keys_inside_tasks(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "job.yaml", '''
        name: anchors
        tasks:
          - &first
            id: a
            command: "true"
            max_attempts: 2
          - <<: *first
            id: b
        '''))
    assert [(g.id, g.max_attempts) for g in spec.tasks] == [("a", 2), ("b", 2)]


# ----------------------------------------------------------------- locate


def test_toml_lines_cover_the_constructs() -> None:
    text = textwrap.dedent('''
        name = "x"   # comment with [brackets] and = signs
        "quoted key" = 1
        a.b.c = 2
        multi = """
        [not a table]
        key = "not a key"
        """
        lit = \'\'\'it's
        fine\'\'\'
        arr = [
          1,  # one
          [2, 3],
          { k = "v", "q.k" = 4 },
        ]
        inline = { x = 1, y.z = [5, 6] }

        [defaults]
        env = { A = "1" }

        [[tasks]]
        id = "a"
        [tasks.mpi]
        nodes = 2

        [[tasks]]
        id = "b"
        params = { alpha = [
            0.1,
            0.2,
        ] }
        [[tasks.steps]]
        run = "s"
        ''').lstrip("\n")
    lines = toml_lines(text)
    expected = {
        ("name",): 1,
        ("quoted key",): 2,
        ("a", "b", "c"): 3,
        ("multi",): 4,
        ("lit",): 8,
        ("arr",): 10,
        ("arr", 0): 11,
        ("arr", 1): 12,
        ("arr", 1, 1): 12,
        ("arr", 2): 13,
        ("arr", 2, "q.k"): 13,
        ("inline", "y", "z", 1): 15,
        ("defaults",): 17,
        ("defaults", "env", "A"): 18,
        ("tasks", 0): 20,
        ("tasks", 0, "id"): 21,
        ("tasks", 0, "mpi"): 22,
        ("tasks", 0, "mpi", "nodes"): 23,
        ("tasks", 1): 25,
        ("tasks", 1, "params", "alpha"): 27,
        ("tasks", 1, "params", "alpha", 1): 29,
        ("tasks", 1, "steps", 0): 31,
        ("tasks", 1, "steps", 0, "run"): 32,
    }
    assert {path: lines.get(path) for path in expected} == expected
    assert ("not a table",) not in lines
    assert ("key",) not in lines


def test_yaml_lines_and_duplicates() -> None:
    text = "a: 1\nb:\n  - x\n  - {c: 2,\n     d: 3}\na: 4\n"
    lines, duplicates = yaml_lines(yaml.compose(text))
    assert lines[("a",)] == 1
    assert lines[("b", 1)] == 4
    assert lines[("b", 1, "d")] == 5
    assert duplicates == [(("a",), 6, 1)]


def test_line_for_falls_back_to_the_nearest_ancestor() -> None:
    lines = {("tasks",): 3, ("tasks", 0): 4}
    assert line_for(lines, ("tasks", 0, "mpi", "nodes")) == 4
    assert line_for(lines, ("name",)) == 1
    assert format_path(("tasks", 0, "params", "alpha", 2)) == "tasks[0].params.alpha[2]"
    assert format_path(("files", 1)) == "files[1]"
