"""Slurm-style array expressions, kept as ranges: a million members cost a few integers.

Syntax: comma-separated items, each ``N``, ``A-B`` or ``A-B:STEP``, optionally followed
by ``%LIMIT`` for the whole expression (at most LIMIT members running at once), e.g.
``0-63``, ``1,3,5``, ``0-99:2``, ``0-999%8``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ARRAY_SIZE = 10_000_000
_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class IndexSet:
    """An ordered set of array indices, stored as ``range`` objects."""

    ranges: tuple[range, ...]
    limit: int | None = None
    expression: str = ""

    @classmethod
    def parse(cls, expression: str) -> IndexSet:
        """Parse a Slurm array expression; raises ValueError saying what is wrong."""
        text = expression.strip().replace(" ", "")
        if not text:
            raise ValueError("empty array expression")
        limit: int | None = None
        if "%" in text:
            text, _, limit_text = text.partition("%")
            if not limit_text.isdigit() or int(limit_text) < 1:
                raise ValueError(f"bad concurrency limit {'%' + limit_text!r}: use %N with N >= 1")
            limit = int(limit_text)
        ranges: list[range] = []
        for item in text.split(","):
            match = _ITEM.match(item)
            if not match:
                raise ValueError(
                    f"bad array item {item!r}: use N, A-B or A-B:STEP (e.g. 0-63, 1,3,5, 0-99:2)"
                )
            start = int(match.group(1))
            stop = int(match.group(2)) if match.group(2) is not None else start
            step = int(match.group(3)) if match.group(3) is not None else 1
            if stop < start:
                raise ValueError(f"bad array range {item!r}: {stop} is below {start}")
            if step < 1:
                raise ValueError(f"bad array step in {item!r}: the step must be >= 1")
            ranges.append(range(start, stop + 1, step))
        merged = _sorted_disjoint(ranges, expression)
        size = sum(len(r) for r in merged)
        if size > MAX_ARRAY_SIZE:
            raise ValueError(f"array of {size} members is larger than {MAX_ARRAY_SIZE}")
        return cls(tuple(merged), limit, expression.strip())

    def __len__(self) -> int:
        return sum(len(r) for r in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for r in self.ranges:
            yield from r

    def __contains__(self, index: object) -> bool:
        return any(index in r for r in self.ranges)

    def nth(self, position: int) -> int:
        """The index at `position` (0-based) in ascending order."""
        if position < 0:
            raise IndexError(position)
        for r in self.ranges:
            if position < len(r):
                return r[position]
            position -= len(r)
        raise IndexError(position)

    def position(self, index: int) -> int:
        """Inverse of `nth`; raises KeyError when `index` is not a member."""
        starts = [r.start for r in self.ranges]
        i = bisect.bisect_right(starts, index) - 1
        offset = sum(len(r) for r in self.ranges[: max(i, 0)])
        if i >= 0 and index in self.ranges[i]:
            return offset + self.ranges[i].index(index)
        raise KeyError(index)


def _sorted_disjoint(ranges: list[range], expression: str) -> list[range]:
    """Ranges in ascending order; overlapping items are refused (a duplicate member)."""
    ordered = sorted(ranges, key=lambda r: r.start)
    for before, after in zip(ordered, ordered[1:], strict=False):
        if after.start <= before[-1]:
            overlap = set(before) & set(after) if len(before) < 100_000 else None
            if overlap is None or overlap:
                raise ValueError(f"array expression {expression!r} lists some indices twice")
    if any(after.start <= before[-1] for before, after in zip(ordered, ordered[1:], strict=False)):
        # interleaved but disjoint (e.g. 0-9:2,1-9:2): fall back to explicit members
        members = sorted(i for r in ordered for i in r)
        return [range(i, i + 1) for i in members]
    return ordered
