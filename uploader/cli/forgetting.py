"""`uploader forget`: its filters as a ledger Selection, the confirmation before job_ids are forgotten, and
what it prints. The command itself (options) is in uploader.cli.commands; the SQL in uploader.ledger."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from uploader.cli.hints import Repeat
from uploader.cli.output import plural
from uploader.cli.stdin import STDIN_LABEL
from uploader.errors import UploaderError, UsageError

__all__ = ["PROJECT_CODES", "confirm_forget", "forget_selection", "print_forgotten", "project_hint"]

#: API codes that stop a run over one project (not found, or the key may not use it).
PROJECT_CODES = frozenset({"unauthorized", "core.webutil.auther", "resource_error", "PR_0001", "http_403"})
#: A bare 401 (no code): about one project too when the ledger holds several (the key may be good for the others).
#: Not `auth-failure` (`core.webutil.token_auth`): the API's word for an incorrect key, wrong for every project.
KEY_CODES = frozenset({"http_401"})


def forget_selection(
    project_id: str | None, statuses: tuple[str, ...], reference_id_file: Path | None, manifest: str | None
) -> Any:
    """The rows `forget` acts on; UsageError without any filter or with an unknown state."""
    from uploader.ledger import Selection, Status, manifest_path_text

    valid = {s.value for s in Status}
    for s in statuses:
        if s not in valid:
            raise UsageError(f"--status {s!r}: choose from {', '.join(sorted(valid))}")
    refs = None if reference_id_file is None else reference_ids(reference_id_file)
    recorded = None
    if manifest is not None:
        recorded = STDIN_LABEL if manifest == "-" else manifest_path_text(Path(manifest))
    selection = Selection(project_id=project_id, statuses=tuple(statuses), reference_ids=refs, manifest=recorded)
    if selection.empty:
        raise UsageError("give at least one filter: --project-id, --status, --reference-id-file or --manifest")
    return selection


def recorded_manifest(given: str, recorded: list[str]) -> str:
    """The path the ledger recorded for the manifest `--manifest` names (as given, or by another spelling of
    the same file: `./m.csv`, `sub/../m.csv`, a symlink); an UploaderError naming the recorded ones when none
    is that file (forgetting nothing without a word would look like success)."""
    if given in recorded:
        return given
    wanted = {os.path.normpath(given), os.path.realpath(given)}
    for path in recorded:
        if path != STDIN_LABEL and {os.path.normpath(path), os.path.realpath(path)} & wanted:
            return path
    shown = ", ".join(recorded[:5]) + (f" and {len(recorded) - 5} more" if len(recorded) > 5 else "")
    raise UploaderError(
        f"--manifest {given}: no load of that file is recorded in this ledger "
        f"({'its loads: ' + shown if recorded else 'it records no load'}); nothing was forgotten"
    )


def reference_ids(path: Path) -> tuple[str, ...]:
    """The reference_ids of a file, one per line: lines end at LF (or CRLF) only, as a reference_id may hold
    U+2028 or another character str.splitlines breaks at; blank lines skipped, a UTF-8 BOM dropped. A file
    that is not UTF-8 is an UploaderError naming its line and byte (exit 1: nothing is forgotten)."""
    raw = path.read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UploaderError(
            f"{path}:{line}: is not valid UTF-8 (byte 0x{raw[e.start]:02X} at byte {e.start + 1}); save the file "
            "as UTF-8; nothing was forgotten"
        ) from None
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return tuple(line for line in lines if line.strip())


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def confirm_forget(counts: Any, yes: bool) -> None:
    """Before --include-created forgets rows whose job exists: say how many (and job_ids), then ask, unless
    `yes`. Without a terminal to ask on, refuse (UsageError) unless `yes`."""
    if not counts.created:
        return
    click.echo(
        f"{plural(counts.created, 'row')} whose job exists (or may exist) at the API will be forgotten, "
        f"{counts.with_job_id} job_ids with them: loading them again would create their jobs again.",
        err=True,
    )
    if yes:
        return
    if not _stdin_is_tty():
        raise UsageError("not forgetting jobs without confirmation: no terminal to ask on; pass --yes")
    click.confirm("Forget them?", abort=True, err=True)


def print_forgotten(removed: Any, kept: Any | None, as_json: bool = False) -> None:
    """What `forget` removed, and (without --include-created) what it kept and why."""
    total = removed.never_created + removed.created
    if as_json:
        document = {
            "forgotten": total,
            "never_created": removed.never_created,
            "created": removed.created,
            "job_ids": removed.with_job_id,
        }
        if kept is not None:
            document["kept"] = {"created": kept.created, "job_ids": kept.with_job_id}
        click.echo(json.dumps(document, indent=2))
        return
    click.echo(
        f"forgot {plural(total, 'row')}: {removed.never_created} that never created a job"
        + (f", {removed.created} whose job exists or may ({removed.with_job_id} job_ids)" if removed.created else "")
        + "."
    )
    if kept is not None and kept.created:
        click.echo(
            f"kept {plural(kept.created, 'row')} whose job exists or may exist at the API "
            f"({kept.with_job_id} with a job_id); --include-created forgets them too."
        )


def project_hint(exc: Any, led: Any, repeat: Repeat) -> str | None:
    """For a run stopped by an answer about one project (PROJECT_CODES; KEY_CODES when the ledger holds several
    projects): that project, how many rows of the ledger it holds, and how to forget them if they are not this
    upload's. None for any other stop."""
    from uploader.ledger import project_counts

    project, code = getattr(exc, "project_id", None), getattr(exc, "code", None)
    if project is None or code not in PROJECT_CODES | KEY_CODES:
        return None
    projects = project_counts(led.engine)
    if code in KEY_CODES and len(projects) < 2:
        return None
    counts = projects.get(project, {})
    rows = sum(counts.values())
    waiting = counts.get("pending", 0) + counts.get("in_flight", 0)
    return (
        f"The run was stopped by a row of project {project!r}: the ledger holds {plural(rows, 'row')} of that project "
        f"({waiting} not sent yet). If they do not belong to this upload, remove them with "
        f"`{repeat.command('forget --project-id ' + shlex.quote(project))}`."
    )
