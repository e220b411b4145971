"""Whether a failed attempt is tried again, and after how long. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from batchpool import defaults


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the node agent reported it."""

    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled \
            and self.error is None

    def describe(self) -> str:
        """A short reason for reports: 'exit 3', 'killed by signal 9', 'timed out'."""
        if self.error:
            return self.error
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return "timed out"
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exit {self.exit_code}"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff between attempts: base, 2*base, 4*base ... capped."""

    base: float = defaults.RETRY_BACKOFF
    cap: float = defaults.RETRY_BACKOFF_MAX

    def delay(self, failed_attempts: int) -> float:
        """Seconds to wait before the next attempt, after `failed_attempts` failures."""
        if failed_attempts < 1:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (failed_attempts - 1)))


def should_retry(outcome: Outcome, attempts: int, max_attempts: int,
                 retry_exit_codes: tuple[int, ...]) -> bool:
    """True when a failed attempt (the `attempts`-th counted one) earns another try.

    With `retry_exit_codes` empty any failure is retried; otherwise only those exit
    codes are (a timeout or a signal then ends the task).
    """
    if outcome.succeeded or outcome.cancelled or attempts >= max_attempts:
        return False
    if not retry_exit_codes:
        return True
    return outcome.exit_code is not None and outcome.exit_code in retry_exit_codes
