"""Live counts of a running job, kept by the controller and read by the displays."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class JobProgress:
    """How far one job has got. Mutated only by the controller's event loop."""

    job_id: int
    name: str
    total: int
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    running: int = 0
    started: float = field(default_factory=time.time)
    state: str = "running"
    reason: str | None = None
    finished_now: int = 0        # tasks ended in this run (for the rate)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def queued(self) -> int:
        return max(0, self.total - self.done - self.running)

    def rate(self, now: float | None = None) -> float:
        """Tasks finished per second in this run."""
        elapsed = (now or time.time()) - self.started
        return self.finished_now / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        left = self.total - self.done
        return left / rate if rate > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {"job_id": self.job_id, "name": self.name, "state": self.state,
                "reason": self.reason, "total": self.total, "succeeded": self.succeeded,
                "failed": self.failed, "cancelled": self.cancelled, "running": self.running,
                "queued": self.queued}
