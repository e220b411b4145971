"""Slurm-style array expressions, kept as ranges: a million members cost a few integers.

Syntax: comma-separated items, each ``N``, ``A-B`` or ``A-B:STEP``, optionally followed
by ``%LIMIT`` for the whole expression (at most LIMIT members running at once), e.g.
``0-63``, ``1,3,5``, ``0-99:2``, ``0-999%8``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ARRAY_SIZE = 10_000_000
_ITEM = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


@dataclass(frozen=True)
class IndexSet:
    """A set of array indices, stored as ``range`` objects ordered by their start.

    Members are visited range by range: ``0-9:2,1-9:2`` yields 0, 2, ... 8, then 1, 3 ... 9.
    """

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
        """The index at `position` (0-based) in member order."""
        if position < 0:
            raise IndexError(position)
        for r in self.ranges:
            if position < len(r):
                return r[position]
            position -= len(r)
        raise IndexError(position)

    def position(self, index: int) -> int:
        """Inverse of `nth`; raises KeyError when `index` is not a member."""
        offset = 0
        for r in self.ranges:
            if index in r:
                return offset + r.index(index)
            offset += len(r)
        raise KeyError(index)


def _sorted_disjoint(ranges: list[range], expression: str) -> list[range]:
    """Ranges ordered by start; refuses any index listed twice (exactly, without expanding)."""
    ordered = sorted(ranges, key=lambda r: r.start)
    for i, before in enumerate(ordered):
        for after in ordered[i + 1:]:
            if after.start > before[-1]:
                break  # sorted by start: no later range can reach back into `before`
            if _intersect(before, after):
                raise ValueError(f"array expression {expression!r} lists some indices twice")
    return ordered


def _intersect(a: range, b: range) -> bool:
    """Whether two stepped ranges share a member, solved as a pair of congruences."""
    low, high = max(a.start, b.start), min(a[-1], b[-1])
    if low > high:
        return False
    g = math.gcd(a.step, b.step)
    if (b.start - a.start) % g:
        return False
    # x = a.start + a.step * k, with a.step * k = b.start - a.start (mod b.step)
    step_b = b.step // g
    k = ((b.start - a.start) // g) * pow(a.step // g, -1, step_b) % step_b if step_b > 1 else 0
    first = a.start + a.step * k
    period = a.step * step_b  # lcm(a.step, b.step)
    if first < low:
        first += -(-(low - first) // period) * period
    return first <= high
