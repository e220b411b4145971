"""Slurm-style array expressions (batchpool/spec/arrays.py)."""

from __future__ import annotations

import time

import pytest

from batchpool.spec.arrays import MAX_ARRAY_SIZE, IndexSet


@pytest.mark.parametrize(
    ("expression", "members", "limit"),
    [
        ("0", [0], None),
        ("0-3", [0, 1, 2, 3], None),
        ("1,3,5", [1, 3, 5], None),
        ("5,1,3", [1, 3, 5], None),
        ("0-9:3", [0, 3, 6, 9], None),
        ("0-10:3", [0, 3, 6, 9], None),
        ("0-3%2", [0, 1, 2, 3], 2),
        ("7-7", [7], None),
        (" 0-2 , 10 ", [0, 1, 2, 10], None),
        ("0-4:2,1-3:2", [0, 2, 4, 1, 3], None),  # interleaved, disjoint: range by range
        ("10-12,0-1%1", [0, 1, 10, 11, 12], 1),
    ],
)
def test_parse(expression: str, members: list[int], limit: int | None) -> None:
    index_set = IndexSet.parse(expression)
    assert list(index_set) == members
    assert len(index_set) == len(members)
    assert index_set.limit == limit
    assert [index_set.nth(p) for p in range(len(members))] == members
    assert [index_set.position(i) for i in members] == list(range(len(members)))
    assert all(i in index_set for i in members)
    assert index_set.expression == expression.strip()


@pytest.mark.parametrize(
    ("expression", "phrase"),
    [
        ("", "empty array expression"),
        ("   ", "empty array expression"),
        ("5-1", "bad array range '5-1'"),
        ("a-b", "bad array item 'a-b'"),
        ("-1", "bad array item"),
        ("1,,2", "bad array item ''"),
        ("0-10:0", "step must be >= 1"),
        ("0-9%0", "bad concurrency limit"),
        ("0-9%", "bad concurrency limit"),
        ("0-9%x", "bad concurrency limit"),
        ("%4", "bad array item"),
        ("0-9,5", "lists some indices twice"),
        ("0-9,9-12", "lists some indices twice"),
        (f"0-{MAX_ARRAY_SIZE}", "larger than"),
    ],
)
def test_parse_errors(expression: str, phrase: str) -> None:
    with pytest.raises(ValueError) as info:
        IndexSet.parse(expression)
    assert phrase in str(info.value)


def test_membership_and_bounds() -> None:
    index_set = IndexSet.parse("0-99:10,200")
    assert 30 in index_set
    assert 31 not in index_set
    assert 200 in index_set
    assert 199 not in index_set
    with pytest.raises(IndexError):
        index_set.nth(11)
    with pytest.raises(IndexError):
        index_set.nth(-1)
    with pytest.raises(KeyError):
        index_set.position(31)
    with pytest.raises(KeyError):
        index_set.position(-5)


def test_a_million_members_cost_a_few_integers() -> None:
    started = time.perf_counter()
    index_set = IndexSet.parse("0-999999%100")
    assert len(index_set) == 1_000_000
    assert index_set.nth(999_999) == 999_999
    assert index_set.position(123_456) == 123_456
    assert 999_999 in index_set
    assert index_set.ranges == (range(0, 1_000_000),)
    assert time.perf_counter() - started < 0.1


def test_equal_expressions_are_equal_values() -> None:
    assert IndexSet.parse("0-3") == IndexSet.parse("0-3")
    assert list(IndexSet.parse("0-3")) == list(IndexSet.parse("3,0-2"))


def test_regression_non_adjacent_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        IndexSet.parse("0-10:2,1-9:2,4")


def test_regression_large_interleaved_ranges_are_accepted() -> None:
    assert len(IndexSet.parse("0-199999:2,1-199999:2")) == 200_000
