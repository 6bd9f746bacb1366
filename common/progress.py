"""Progress of a long step on stderr: rich's live bar on a terminal, sparse plain lines in a log.

stdout carries what the steps print for Make and the tests (paths, tables), so progress only
ever goes to stderr. A person at a terminal sees a live bar with the count, the rate and the
ETA. A log (stderr not a terminal, or ``CI`` set) must not fill with redraws, so it gets no
control codes at all: one plain line every ``QUIET_INTERVAL_S`` seconds at most (the environment
variable ``ASCEND_VISION_PROGRESS_S`` changes the interval) and, when the step succeeds, a final
line with the count, the elapsed time and the rate. A failing step prints no final line, so its
``error: ...`` stays the last line.

Usage::

    with StepProgress("fcos preprocess", total=len(images), unit="images") as progress:
        for image in images:
            ...
            progress.advance()
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from datetime import timedelta
from typing import TextIO

from rich import filesize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column
from rich.text import Text

from common.errors import ToolError

#: seconds between two plain lines in a log: often enough to see a step is alive, few enough to read
QUIET_INTERVAL_S = 15.0
INTERVAL_ENV = "ASCEND_VISION_PROGRESS_S"
#: the unit whose counts and rates are shown as sizes (MB, MB/s): downloads
BYTES = "bytes"


def ci_set() -> bool:
    """CI services set ``CI`` (usually ``true``); ``CI=0``/``false`` means a person's shell."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def live_bar_wanted(stream: TextIO) -> bool:
    """A redrawn bar only where a person watches it: a terminal, outside CI."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not ci_set()


def quiet_interval() -> float:
    """The seconds between plain lines: ``ASCEND_VISION_PROGRESS_S`` or ``QUIET_INTERVAL_S``."""
    value = os.environ.get(INTERVAL_ENV, "").strip()
    if not value:
        return QUIET_INTERVAL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ToolError(f"{INTERVAL_ENV}={value!r} is invalid: give the seconds between progress lines in a log, "
                        f"e.g. {INTERVAL_ENV}={QUIET_INTERVAL_S:g}, or unset it")
    return seconds


def amount(value: float, unit: str) -> str:
    """A count in its unit: sizes for bytes (rich's decimal units), plain integers otherwise."""
    return filesize.decimal(int(value)) if unit == BYTES else f"{int(value)}"


def rate_text(per_second: float | None, unit: str) -> str:
    if per_second is None:
        return "?"
    if unit == BYTES:
        return f"{filesize.decimal(int(per_second))}/s"
    return f"{per_second:.2f} {unit}/s" if per_second < 10 else f"{per_second:.1f} {unit}/s"


def duration(seconds: float | None) -> str:
    """H:MM:SS, as rich's time columns write it."""
    return "-:--:--" if seconds is None else str(timedelta(seconds=max(0, int(seconds))))


def run_rate(task: Task) -> float | None:
    """Items of this run per second since it started (a resumed run's earlier items not counted)."""
    elapsed = task.finished_time if task.finished else task.elapsed
    done = task.completed - task.fields.get("initial", 0)
    return done / elapsed if elapsed and done > 0 else None


class RateColumn(ProgressColumn):
    """``12.3 images/s``: rich's recent-speed estimate, the run's average until it has one."""

    def __init__(self, unit: str) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.unit = unit

    def render(self, task: Task) -> Text:
        return Text(rate_text(task.finished_speed or task.speed or run_rate(task), self.unit),
                    style="progress.data.speed")


def live_columns(unit: str) -> list[ProgressColumn]:
    """``label ━━━╸━━ 28/30 17.7 images/s 0:00:01 ETA 0:00:01``: on a narrow terminal the bar shrinks first."""
    def text(template: str) -> TextColumn:
        return TextColumn(template, table_column=Column(no_wrap=True))

    fixed = Column(no_wrap=True)
    counts: list[ProgressColumn] = ([DownloadColumn(table_column=fixed), TransferSpeedColumn(table_column=fixed)]
                                    if unit == BYTES else [MofNCompleteColumn(table_column=fixed), RateColumn(unit)])
    return [text("{task.description}"), BarColumn(bar_width=None), *counts,
            TimeElapsedColumn(table_column=fixed), text("ETA"), TimeRemainingColumn(table_column=fixed)]


class StepProgress:
    """A context-managed progress for ``total`` items (``None``: unknown) of one step.

    ``update(completed)`` sets the count (steps that know it, e.g. a resumed run's), ``advance(n)``
    adds to it. ``completed`` at the start is work a previous run did: shown, but not in the rate.
    A step inside another (perf: inference per batch size) is a second row of the same live
    display, since rich draws one live display at a time.
    """

    #: the live display this process draws, shared by nested steps
    _display: Progress | None = None

    def __init__(self, label: str, total: int | None, unit: str = "items", *, completed: int = 0,
                 stream: TextIO | None = None) -> None:
        self.label, self.unit, self.total, self.initial = label, unit, total, completed
        self.stream = stream if stream is not None else sys.stderr
        self.interval = quiet_interval()  # checked on a terminal too: a bad value fails everywhere alike
        # several processes (DEVICE=0,1: one per shard) cannot share one redrawn display: they write lines
        self.live = live_bar_wanted(self.stream) and multiprocessing.parent_process() is None
        self._progress: Progress | None = None
        self._owner = False

    @property
    def task(self) -> Task:
        return next(t for t in self._progress.tasks if t.id == self._task_id)

    def __enter__(self) -> StepProgress:
        if self.live and StepProgress._display is not None:
            self._progress = StepProgress._display
        else:
            # redirect_stderr: a warning printed mid-step lands above the bar, not inside it; stdout is
            # never redirected (it holds what Make and the tests read)
            self._progress = Progress(*live_columns(self.unit), console=Console(file=self.stream),
                                      disable=not self.live, redirect_stdout=False, redirect_stderr=True)
            self._owner = True
            if self.live:
                StepProgress._display = self._progress
            self._progress.start()
        self._task_id = self._progress.add_task(self.label, total=self.total, completed=self.initial,
                                                initial=self.initial)
        self._last_line = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._owner:
            self._progress.stop()
            if self.live:
                StepProgress._display = None
        else:
            self._progress.remove_task(self._task_id)  # the outer step's row stays
        if exc_type is None and not self.live:
            self._write(self.final_line())

    def update(self, completed: int) -> None:
        self._progress.update(self._task_id, completed=completed)
        self._maybe_line()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task_id, n)
        self._maybe_line()

    def count_text(self) -> str:
        task = self.task
        total = "" if task.total is None else f"/{amount(task.total, self.unit)}"
        suffix = "" if self.unit == BYTES else f" {self.unit}"
        return f"{amount(task.completed, self.unit)}{total}{suffix}"

    def status_line(self) -> str:
        """A log's periodic line: count, recent rate, ETA."""
        task = self.task
        eta = "" if task.total is None else f", ETA {duration(task.time_remaining)}"
        return f"{self.label}: {self.count_text()}, {rate_text(task.speed or run_rate(task), self.unit)}{eta}"

    def final_line(self) -> str:
        """A log's last line: count, elapsed time, the run's average rate."""
        task = self.task
        initial = task.fields.get("initial", 0)
        rate = run_rate(task)
        shown = [f"{self.count_text()} in {duration(task.finished_time or task.elapsed)}"]
        shown += [rate_text(rate, self.unit)] if rate is not None else []
        shown += [f"resumed at {amount(initial, self.unit)}"] if initial else []
        return f"{self.label}: {', '.join(shown)}"

    def _maybe_line(self) -> None:
        if self.live:
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval and not self.task.finished:
            self._last_line = now
            self._write(self.status_line())

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")  # one write: lines of parallel shard processes do not interleave
        self.stream.flush()
