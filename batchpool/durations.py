"""Durations as users write them ("90s", "10m", "2h", "1h30m", "1d") and as seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | int | float) -> float:
    """Seconds in `value`; a bare number is seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '90s', '10m' or '2h', not a boolean")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"duration must be positive, got {value}")
        return float(value)
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        try:
            total, pos = float(text), len(text)
        except ValueError:
            raise ValueError(
                f"bad duration {value!r}: use a number of seconds or units ms/s/m/h/d, "
                "e.g. '90s', '10m', '1h30m'"
            ) from None
    if total <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """A short human form: 0.4s, 12s, 3m05s, 2h01m."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
