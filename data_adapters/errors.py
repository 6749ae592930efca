"""The one error type of the data layer: bad input or a failed write, saying where and what to fix.

Standard library only, so that the generic helpers (:mod:`data_adapters.io`) can raise it without loading
the readers.
"""

from __future__ import annotations

import os


class AdapterError(ValueError):
    """Bad input, with where it is (file, column, subject) and what is wrong.

    ``str(err)`` reads ``"<file>: column 'x': subject 123: what is wrong"``, short enough for a CLI.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | os.PathLike | None = None,
        column: str | None = None,
        subject: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.column = column
        self.subject = subject
        self.reason = message
        where = []
        if self.file is not None:
            where.append(self.file)
        if column is not None:
            where.append(f"column {column!r}")
        if subject is not None:
            where.append(f"subject {subject}")
        super().__init__(": ".join([*where, message]))
