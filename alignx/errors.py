"""User-facing error types.

Every error a user can fix (bad data, bad config, missing model) is an :class:`AlignxError`.
The CLI prints these as one clear message without a traceback and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AlignxError(Exception):
    """Base class of errors caused by user input rather than by alignx itself."""


class ConfigError(AlignxError):
    """A configuration value or key is invalid."""


class PluginError(AlignxError):
    """A registry lookup or registration failed (unknown or duplicate name)."""


class ModelLoadError(AlignxError):
    """A model or tokenizer could not be loaded from the given path or hub id."""


class TrainingDiverged(AlignxError):
    """A loss or the trained weights became NaN/inf; training stopped before the bad update was saved.

    Raised by every objective: :class:`alignx.objectives.guards.DivergenceGuard` checks the loss
    before each backward and the weights after each optimizer step (automatic optimisation), and
    the online RL loop checks its own losses, samples and updates (manual optimisation).
    """


class DataError(AlignxError):
    """A dataset row is malformed.

    The message always names where the problem is: the source (file path or dataset id),
    the 1-based row number and the column, followed by what was expected.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None, column: str | None = None):
        self.source = source
        self.row = row
        self.column = column
        self.detail = message
        where = [str(source)]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")


class JobInterrupted(BaseException):
    """The job received SIGINT or SIGTERM and stopped: its run ends KILLED, the process exits 128 + signal.

    A BaseException (like KeyboardInterrupt), so ``except Exception`` blocks on the way out do not
    swallow it. ``exit_code`` is the shell convention: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
    """

    def __init__(self, signum: int, checkpoint: str | None = None) -> None:
        import signal

        self.signum = int(signum)
        self.signal_name = signal.Signals(self.signum).name
        self.checkpoint = checkpoint
        self.exit_code = 128 + self.signum
        where = f"; checkpoint written: {checkpoint} (continue with resume=auto)" if checkpoint else ""
        super().__init__(f"interrupted by {self.signal_name}{where}")
