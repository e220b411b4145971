"""What a person sees: a live progress bar on a terminal, plain lines elsewhere, tables after.

rich draws the bar and the tables (it is well kept, handles terminals and widths, and
falls back cleanly when output is not a terminal).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from batchpool import defaults
from batchpool.durations import format_duration
from batchpool.progress import JobProgress


class _CountsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        p: JobProgress | None = task.fields.get("job")
        if p is None:
            return Text("")
        now = time.time()
        eta = p.eta(now)
        parts = [("ok ", "dim"), (f"{p.succeeded}", "green"), (" failed ", "dim"),
                 (f"{p.failed}", "red" if p.failed else "dim"), (" running ", "dim"),
                 (f"{p.running}", "cyan"), (" queued ", "dim"), (f"{p.queued}", ""),
                 (f" {p.rate(now):.1f}/s", "dim"),
                 (f" ETA {format_duration(eta)}" if eta is not None else "", "dim")]
        return Text.assemble(*parts)


class LiveDisplay:
    """Shows one job's progress until `stop`; a bar on a terminal, lines otherwise."""

    def __init__(self, progress: JobProgress, stream: TextIO | None = None,
                 interval: float = defaults.PROGRESS_LINE_INTERVAL) -> None:
        self.job = progress
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream)
        self.interval = interval
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_line = 0.0

    def start(self) -> None:
        if self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
                                 TextColumn("{task.completed}/{task.total}"), _CountsColumn(),
                                 console=self.console, transient=False)
            self._task = self._bar.add_task(f"job {self.job.job_id} {self.job.name}",
                                            total=self.job.total, job=self.job)
            self._bar.start()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.job.done)
            return
        now = time.time()
        if force or now - self._last_line >= self.interval:
            self._last_line = now
            self.stream.write(plain_line(self.job, now) + "\n")
            self.stream.flush()

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.job.done)
            self._bar.stop()
        else:
            self.refresh(force=True)


def plain_line(p: JobProgress, now: float) -> str:
    eta = p.eta(now)
    return (f"job {p.job_id} {p.name}: {p.done}/{p.total} done, {p.succeeded} succeeded, "
            f"{p.failed} failed, {p.running} running, {p.queued} queued, "
            f"{p.rate(now):.1f} tasks/s" + (f", ETA {format_duration(eta)}" if eta else ""))


def counts_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    """Per task group: total and how many are in each state."""
    table = Table(title=title, title_justify="left")
    for column in ("group", "total", "succeeded", "failed", "cancelled", "running", "queued"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, c in counts.items():
        table.add_row(group, str(sum(c.values())), str(c["succeeded"]),
                      _red(c["failed"]), str(c["cancelled"]), str(c["running"]),
                      str(c["queued"]))
    return table


def rows_table(columns: Iterable[str], rows: Iterable[Iterable[Any]],
               title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    for number, column in enumerate(columns):
        # names and ids stay whole (the first columns); long free text wraps instead
        table.add_column(column, no_wrap=number < 2, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def _red(n: int) -> str:
    return f"[red]{n}[/red]" if n else "0"
