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
