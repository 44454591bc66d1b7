"""The one exception tree of uploader; each class carries the exit code the CLI uses.

    UploaderError                 exit 1  (anything the user can act on; never a traceback)
    ├── UsageError                exit 2  (bad options or option combinations)
    ├── ManifestError             exit 1  (the manifest is unreadable or invalid: a list of Problems)
    ├── LedgerError               exit 1  (the ledger cannot be opened, migrated or written)
    │   └── LedgerTooNewError     exit 1  (written by a newer uploader)
    ├── ApiError                  exit 1  (the API cannot be used at all)
    │   ├── FatalApiError         exit 1  (bad key, no access, unknown project: the run stops at once)
    │   └── ApiUnreachableError   exit 1  (no answer after retries)
    └── InterruptedRun            exit 130 (Ctrl-C / SIGTERM; the ledger holds everything recorded)

The class docstring is the default message; messages never contain the API key.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ApiError",
    "ApiUnreachableError",
    "FatalApiError",
    "InterruptedRun",
    "LedgerError",
    "LedgerTooNewError",
    "ManifestError",
    "Problem",
    "UploaderError",
    "UsageError",
]

#: How many problems a ManifestError prints before it only counts the rest.
MAX_PROBLEMS_SHOWN = 20


class UploaderError(Exception):
    """uploader failed."""

    exit_code: int = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class UsageError(UploaderError):
    """Invalid usage."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a manifest, located precisely enough to fix it.

    `line` is the 1-based line in a text manifest (the header is line 1) or the 0-based row index in a
    Parquet file (`unit="row"`); None when the problem concerns the whole file.
    """

    file: str
    line: int | None
    column: str | None
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" if self.unit == "line" else f": row {self.line}"
        if self.column:
            where += f": column {self.column!r}"
        return f"{where}: {self.message}"


class ManifestError(UploaderError):
    """The manifest is invalid; nothing was loaded."""

    def __init__(self, problems: list[Problem], total: int | None = None) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line is not None, p.line or 0, p.column or ""))
        self.total = max(total or 0, len(problems))
        shown = self.problems[:MAX_PROBLEMS_SHOWN]
        lines = [str(p) for p in shown]
        if self.total > len(shown):
            lines.append(f"... and {self.total - len(shown)} more problem(s)")
        noun = "problem" if self.total == 1 else "problems"
        lines.append(f"{self.total} {noun} found; nothing was loaded.")
        super().__init__("\n".join(lines))


class LedgerError(UploaderError):
    """The ledger cannot be used."""


class LedgerTooNewError(LedgerError):
    """The ledger was written by a newer version of uploader; upgrade uploader to use it."""


class ApiError(UploaderError):
    """The API cannot be used."""


class FatalApiError(ApiError):
    """The API refused the run (API key, project access or project); nothing was marked failed."""

    def __init__(
        self,
        message: str | None = None,
        code: str | None = None,
        http_status: int | None = None,
        project_id: str | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.http_status = http_status
        self.project_id = project_id  #: the project of the row whose answer stopped the run, if one did


class ApiUnreachableError(ApiError):
    """The API could not be reached, or refused a read for good (`code`: the API's error code, if it gave one)."""

    def __init__(self, message: str | None = None, code: str | None = None):
        super().__init__(message)
        self.code = code


class InterruptedRun(UploaderError):
    """Interrupted; everything recorded so far is in the ledger. Run the same command again to resume."""

    exit_code = 130
