"""The root of every error a user can fix: bad input, bad files, a request the model cannot run.

Each room raises its own subclass (`ConfigError`, `CheckpointError`, `ProfileError`,
`EngineDirectoryError`, `PipelineInputError`, `TrainConfigError`, ...), and every message says
what to do. The CLI prints a `CogvxError` as one line and exits 2; anything else is a bug in
cogvx and keeps its traceback, so an internal error is never disguised as a user error.

`CogvxError` is a `ValueError` so that callers of the Python API that catch `ValueError` keep
working; the CLI catches `CogvxError` only.
"""

from __future__ import annotations


class CogvxError(ValueError):
    """Something the user can fix; the message names the input and what to change."""


class NonFiniteError(CogvxError):
    """A NaN or an infinity where a number enters or a tensor leaves a stage; the message names the
    stage (or layer) and the step, and what usually causes it."""
