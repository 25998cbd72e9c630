"""Progress reporting: one small protocol the rooms call, and the progress bar the CLI hands them.

The rooms (trainers, dataset caching, the toy evaluation) never draw: they take a `Progress` or
None (None = silent) and report what they are doing through it. The CLI, which talks, passes a
`BarProgress` (tqdm bars on stderr); tests and library callers pass None or their own object,
e.g. one that records the calls. tqdm is imported only when a bar is drawn.

A `Progress` is used for one task at a time: `start` a task of `total` units, `update` it as
units finish, `close` it. Starting a new task closes the one before.
"""

from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    """What a room may report: a task of `total` units, some done, a short status beside it."""

    def start(self, description: str, total: int, *, done: int = 0, unit: str = "it") -> None:
        """Begin a task of `total` units of which `done` are already finished (a resumed run)."""

    def update(self, n: int = 1, status: str = "") -> None:
        """`n` more units are done; `status` (e.g. 'loss 0.0123') replaces the previous one."""

    def close(self) -> None:
        """The task has ended (finished or left early)."""


class BarProgress:
    """A `Progress` drawn as tqdm bars on stderr, one bar per task: what the CLI passes to the rooms."""

    def __init__(self, file=None):
        self.file = file
        self._bar = None

    @property
    def idle(self) -> bool:
        """No task is being shown."""
        return self._bar is None

    def start(self, description: str, total: int, *, done: int = 0, unit: str = "it") -> None:
        from tqdm import tqdm

        self.close()
        self._bar = tqdm(total=total, initial=done, desc=description, unit=unit, file=self.file or sys.stderr)

    def update(self, n: int = 1, status: str = "") -> None:
        if self._bar is None:
            return
        if status:
            self._bar.set_postfix_str(status, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _Silent:
    """The `Progress` of a caller that passed None: every call does nothing."""

    def start(self, description: str, total: int, *, done: int = 0, unit: str = "it") -> None:
        pass

    def update(self, n: int = 1, status: str = "") -> None:
        pass

    def close(self) -> None:
        pass


def or_silent(progress: Progress | None) -> Progress:
    """`progress`, or one that reports nothing when it is None (so a room never tests for None)."""
    return _Silent() if progress is None else progress
