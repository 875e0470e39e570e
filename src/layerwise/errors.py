"""The one kind of error a user can cause: it names where, says what to do, and exits 2."""

from __future__ import annotations

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UserError(Exception):
    """Bad input or an unavailable service: printed as one line, exit code 2, no traceback."""

    exit_code = 2

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        # One line, whatever a file name or a quoted key holds: control characters are shown escaped.
        return _CONTROL.sub(lambda m: repr(m.group())[1:-1], f"{where}{self.message}")


class ServiceDown(UserError):
    """The Docker Engine or the registry does not answer."""
