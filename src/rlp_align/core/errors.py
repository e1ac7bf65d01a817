"""Errors that are the user's to fix.

The CLI prints a `UserError` as one paragraph without a traceback; anything else is a bug in rlp-align
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input, bad config or a bad environment: the message says what and how to fix it."""


class DataError(UserError):
    """A data file has a bad row. The message names the file, the row number and the field."""

    def __init__(self, path: str, row: int | None, field: str | None, problem: str):
        self.path, self.row, self.field, self.problem = str(path), row, field, problem
        where = self.path
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class NonFiniteError(UserError):
    """A loss or reward became NaN/Inf; training stopped and the last good checkpoint was kept."""
