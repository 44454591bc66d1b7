"""Where the library's log records go for one command: -v/-vv on stderr, --log-file as JSON lines.

The library logs with the standard library only, one record per API request: a job creation's on
`uploader.send` (uploader.send.submit, with its row and attempt), any other on `uploader.api`
(uploader.api.client). It never configures handlers; the CLI adds them here for the length of one command
and removes them afterwards. A JSON line holds the record's time, level, logger, message and the
fields named in EVENT_FIELDS; nothing else of the record (never the key: no field holds it).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["EVENT_FIELDS", "BarSafeStderr", "JsonLines", "LogFile", "configure_logging", "stderr_level"]

#: The fields of a request record (uploader.send.submit, uploader.api.client) copied into a JSON line.
EVENT_FIELDS = (
    "event",
    "method",
    "endpoint",
    "host",
    "reference_id",
    "project_id",
    "batch_id",
    "job_id",
    "attempt",
    "http_status",
    "code",
    "latency_ms",
    "outcome",
)


def stderr_level(verbosity: int) -> int:
    """The level shown on stderr: warnings; -v adds answers that are not a success; -vv every request."""
    return {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)


def _to_stderr(line: str) -> None:
    """A line on stderr, above a progress bar if one is drawn (tqdm.write clears and redraws it)."""
    tqdm = sys.modules.get("tqdm")  # loaded only once a bar was drawn (uploader.cli.output)
    if tqdm is not None:
        tqdm.tqdm.write(line, file=sys.stderr)
    else:
        sys.stderr.write(line + "\n")


class BarSafeStderr(logging.Handler):
    """Records on stderr, above a progress bar if one is drawn, so that -v lines and the bar do not overwrite
    each other."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _to_stderr(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own contract: a failing handler reports, never raises
            self.handleError(record)


class LogFile(logging.FileHandler):
    """--log-file: records appended as JSON lines. A write that fails (a full disk) is told once on stderr, and
    the file is left alone from then on: the command goes on without its log, rather than print a traceback
    per record (logging's own handleError) and fail at the end."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord | None) -> None:
        if self.failed:
            return
        self.failed = True
        exc = sys.exc_info()[1]
        reason = getattr(exc, "strerror", None) or exc
        try:
            _to_stderr(f"warning: cannot write the log file {self.baseFilename}: {reason}; going on without it")
        except Exception:  # noqa: BLE001 - nowhere left to say it
            pass

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.handleError(None)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # what the stream still held could not be written: told already, or now
            self.handleError(None)


class JsonLines(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and EVENT_FIELDS."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(verbosity: int, log_file: str | None) -> Callable[[], None]:
    """Attach the handlers for -v (count `verbosity`) and --log-file to the `uploader` logger; returns the
    function that removes them again (and closes the file). UploaderError if the log file cannot be opened."""
    from uploader.errors import UploaderError

    logger = logging.getLogger("uploader")
    handlers: list[logging.Handler] = []
    if verbosity:
        shown = BarSafeStderr()
        shown.setLevel(stderr_level(verbosity))
        shown.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handlers.append(shown)
    if log_file:
        try:
            written = LogFile(log_file, encoding="utf-8")
        except OSError as exc:
            raise UploaderError(f"cannot open the log file {log_file}: {exc.strerror or exc}") from None
        written.setLevel(logging.DEBUG)
        written.setFormatter(JsonLines())
        handlers.append(written)
    if not handlers:
        return lambda: None
    before = logger.level
    logger.setLevel(min(h.level for h in handlers))
    for h in handlers:
        logger.addHandler(h)

    def remove() -> None:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(before)

    return remove
