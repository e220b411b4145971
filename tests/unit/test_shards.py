"""`shards`: groups generated from files or from row blocks of a .npy array."""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

import numpy as np
import pytest

from batchpool.errors import SpecError
from batchpool.spec import load_spec
from batchpool.spec.shards import block_file, row_range


@pytest.mark.parametrize(("rows", "count"), [(103, 4), (10, 10), (7, 3), (1, 1), (100, 7)])
def test_row_blocks_cover_every_row_once_and_evenly(rows: int, count: int) -> None:
    blocks = [row_range(rows, count, p) for p in range(count)]
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    sizes = [stop - start for start, stop in blocks]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_block_file_holds_exactly_its_rows_and_is_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHPOOL_HOME", str(tmp_path / "home"))
    data = np.arange(103 * 3).reshape(103, 3)
    np.save(tmp_path / "big.npy", data)
    parts = [block_file(str(tmp_path / "big.npy"), 4, p) for p in range(4)]
    assert np.array_equal(np.concatenate([np.load(p) for p in parts]), data)
    assert [len(np.load(p)) for p in parts] == [26, 26, 26, 25]
    stamp = parts[0].stat().st_mtime_ns
    assert block_file(str(tmp_path / "big.npy"), 4, 0) == parts[0]
    assert parts[0].stat().st_mtime_ns == stamp, "a block is cut once"
    assert not list(parts[0].parent.glob("*.tmp"))


def _spec(tmp_path: Path, shards: str, extra: str = "") -> Path:
    path = tmp_path / "job.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "s"
        [[tasks]]
        id = "a"
        command = "cat {{shard_path}} {{shard}} {{index}}"
        shards = {shards}
        {extra}
        """))
    return path


def test_glob_shards_become_members_with_their_file(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    for name in ("b.csv", "a.csv", "c.txt"):
        (tmp_path / "data" / name).write_text(name)
    group = load_spec(_spec(tmp_path, '{ glob = "data/*.csv" }')).tasks[0]
    assert group.size == 2
    assert group.shards is not None
    assert group.shards.files == (str(tmp_path / "data/a.csv"), str(tmp_path / "data/b.csv"))
    member = group.member(1)
    assert member.task_id == "a[1]" and member.params == {"shard": 1, "shard_path": "b.csv"}


def test_npy_shards_count_members(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    group = load_spec(_spec(tmp_path, '{ npy = "x.npy", count = 4 }')).tasks[0]
    assert group.size == 4
    assert group.member(3).params == {"shard": 3, "shard_path": "x-00003.npy"}


@pytest.mark.parametrize(("shards", "extra", "field", "message"), [
    ('{ glob = "none/*.csv" }', "", "tasks[0].shards.glob", "matches no file"),
    ('{ npy = "x.npy", count = 11 }', "", "tasks[0].shards.count", "use count <= 10"),
    ('{ npy = "x.npy" }', "", "tasks[0].shards", "'npy' needs 'count'"),
    ('{ npy = "missing.npy", count = 2 }', "", "tasks[0].shards.npy", "cannot read"),
    ('{ glob = "*.npy", files = ["x.npy"] }', "", "tasks[0].shards.files",
     "one of 'glob' and 'files'"),
    ('{ files = ["nope.csv"] }', "", "tasks[0].shards.files[0]", "not found"),
    ('{ files = ["x.npy"], npy = "x.npy", count = 2 }', "", "tasks[0].shards.npy",
     "one of 'files' and 'npy'"),
    ('{ glob = "*.npy" }', 'array = "0-3"', "tasks[0].array", "cannot be combined"),
    ('{ glob = "*.npy", depth = 2 }', "", "tasks[0].shards.depth", "unknown field"),
])
def test_bad_shards_are_refused_with_their_field(tmp_path: Path, shards: str, extra: str,
                                                 field: str, message: str) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(tmp_path, shards, extra))
    assert caught.value.field == field and message in str(caught.value), str(caught.value)
    assert caught.value.line is not None
