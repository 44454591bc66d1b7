"""The `uploader` command: a thin click layer over the library; turns errors into messages and exit codes.

Exit codes: 0 every row succeeded (or the command did what it was asked); 1 could not run (bad manifest,
ledger, API key, API unreachable, config file); 2 usage; 3 the run finished but some rows failed, are uncertain
or in conflict; 130 interrupted (SIGINT), 143 stopped by SIGTERM; 141 stdout closed by its reader. How results
are shown (reports, summaries, status, progress) is in uploader.cli.output; what every command shares (common
options, environment variables, profiles) in uploader.cli.app and uploader.cli.config.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from uploader import __version__
from uploader.api import DEFAULT_BASE_URL
from uploader.cli.app import (
    STOP,
    TERMINATED,
    UploaderCommand,
    UploaderGroup,
    document_printed,
    emit_error,
    hold_signals,
    interrupted,
    json_asked,
    json_mode,
    quiet_mode,
    standard_streams,
)
from uploader.cli.output import (
    ProgressDisplay,
    SyncDisplay,
    plural,
    print_load,
    print_resume,
    print_status,
    print_summary,
    rows_are,
)
from uploader.cli.preflight import (
    min_url_validity_option,
    preflight_options,
    preflight_settings,
    print_preflight,
    signed_dict,
)
from uploader.cli.signing import sign_option, url_ttl_option
from uploader.cli.units import ByteSize
from uploader.errors import InterruptedRun, UploaderError, UsageError

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.load import LoadReport
    from uploader.manifest import ManifestOptions
    from uploader.send import PreflightOptions, SignedUrls
    from uploader.storage import PayloadSigner

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

EXIT_SOME_FAILED = 3


def _handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print an UploaderError as one clear message (never a traceback; in JSON mode a JSON object) and exit
    with its code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except InterruptedRun:  # a signal: no error, the same words as Ctrl-C anywhere else
            interrupted()
        except UploaderError as exc:
            if getattr(exc, "interrupted", False):  # LedgerLocked: a signal ended a wait for the ledger
                interrupted()
            emit_error(str(exc), exc.exit_code, json_mode(), getattr(exc, "code", None))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            interrupted()

    return wrapper


def _terminate_as_interrupt() -> None:
    """SIGTERM stops any command as Ctrl-C does (a KeyboardInterrupt: its clean-up runs, nothing is left
    half-written, "run the same command again"), exit 143; `run` puts handlers of its own in place while it
    sends (a gentle stop first)."""

    def handler(signum: int, frame: object) -> None:
        TERMINATED[0] = signum
        on_sigint = _event_loop_handler(signal.getsignal(signal.SIGINT))
        if on_sigint is not None:
            # An event loop runs (asyncio.Runner's own SIGINT handler is in place): stop it as Ctrl-C does, by
            # cancelling its main task. An exception raised here could land in a transport's callback, which
            # the loop would take for a broken connection and carry on (exit 0).
            on_sigint(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (an embedding program): its own business
        signal.signal(signal.SIGTERM, handler)


def _event_loop_handler(handler: object) -> Callable[[int, Any], object] | None:
    """`handler` if it is the SIGINT handler asyncio.Runner puts in place while it runs a main task, else None."""
    asyncio = sys.modules.get("asyncio")  # not imported: no loop runs (importing it to find out would slow start-up)
    func = getattr(handler, "func", None)  # a functools.partial of the runner's bound `_on_sigint`
    if asyncio is None or not isinstance(getattr(func, "__self__", None), asyncio.Runner) or not callable(handler):
        return None
    return handler


ledger_option = click.option(
    "--ledger",
    default=None,
    metavar="PATH|URL",
    help="Ledger file or SQLAlchemy URL [default ./uploader.db].",
)


def _manifest_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option("--project-id", help="Project for rows without a project_id column."),
            click.option("--work-flow-id", help="Workflow for rows without a work_flow_id column."),
            click.option(
                "--batch-id", help="Batch (UUID) for the rows of --project-id's project without a batch_id column."
            ),
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["csv", "tsv", "parquet", "jsonl"]),
                help="Manifest format (default: from the file extension).",
            ),
            click.option(
                "--column",
                "columns",
                multiple=True,
                metavar="API_NAME=COLUMN",
                help="Read API field API_NAME from manifest column COLUMN (repeatable).",
            ),
            sign_option,
        ]
    ):
        func = decorator(func)
    return func


def _build_options(
    project_id: str | None,
    work_flow_id: str | None,
    batch_id: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    sign: bool = False,
) -> ManifestOptions:
    from uploader.manifest import ManifestOptions

    pairs = []
    for item in columns:
        api, sep, col = item.partition("=")
        if not sep or not api or not col:
            raise UsageError(f"--column expects API_NAME=COLUMN, got {item!r}")
        pairs.append((api.strip(), col.strip()))
    return ManifestOptions(
        project_id=project_id,
        work_flow_id=work_flow_id,
        batch_id=batch_id,
        format=fmt,
        columns=tuple(pairs),
        sign=sign,
    )


def _not_the_ledger(output: str, ledger: str | None) -> None:
    """Refuse an -o that names the ledger's own file (a slip of `-o uploader.db` would destroy it)."""
    from uploader.ledger import overwrites_ledger

    problem = overwrites_ledger(output, ledger, "-o")
    if problem is not None:
        raise UploaderError(problem)


def _open_ledger(ledger: str | None, create: bool = True) -> Ledger:
    """Open the ledger for this command; it is closed when the command ends (also in-process callers)."""
    from uploader.ledger import Ledger

    led = Ledger.open(ledger, create=create)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(led.close)
    if led.engine.dialect.name != "sqlite":
        _watch_statements(led)
    return led


#: The run's notices that only report what went well: not printed under -q (README: "-q prints only errors,
#: warnings and the final result"); a wait, a cut Retry-After or a warning still is.
_NEWS_ONLY = ("created batch ",)


def _notices(quiet: bool, told: list[str]) -> Callable[[str], None]:
    """How `run` tells its notices: on stderr (under -q not those in _NEWS_ONLY), and each kept in `told` for the
    `--json` document's `notices`."""

    def tell(message: str) -> None:
        told.append(message)
        if not (quiet and message.startswith(_NEWS_ONLY)):
            click.echo(message, err=True)

    return tell


def _watch_statements(led: Ledger) -> None:
    """On PostgreSQL, a statement of this command that the server has not finished after 2 s (it waits for a
    lock another session holds: a long load's merge, an ALTER TABLE) is told, every 10 s, and cancelled on
    SIGTERM: the command then stops (143) instead of waiting on, also from a worker thread (`sync`'s). `run`'s
    submit loop puts a wait of its own in place while it sends."""
    import math

    from uploader.ledger import LockWait, set_lock_wait

    def waiting(seconds: float) -> None:
        click.echo(
            f"waiting for the ledger: its database has not finished a statement for {seconds:.0f} s (another "
            "session may hold a lock on its tables: see pg_stat_activity and pg_locks)",
            err=True,
        )

    set_lock_wait(led.engine, LockWait(lambda: TERMINATED[0] != 0, waiting, limit=math.inf))


@click.group(cls=UploaderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uploader")
def cli() -> None:
    """Send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable.

    Every option can also come from an environment variable (shown in each command's --help) or from a
    profile of the config files ./uploader.toml and the user's config.toml (`uploader config` shows what
    applies and where from). Shell completion: eval "$(_UPLOADER_COMPLETE=bash_source uploader)".
    """


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@ledger_option
@min_url_validity_option("Count the pending rows' signed URLs that expire sooner than this from now.")
@_handle_errors
def load(
    manifest: Path,
    project_id: str | None,
    work_flow_id: str | None,
    batch_id: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    sign: bool,
    ledger: str | None,
    min_url_validity: dt.timedelta,
) -> None:
    """Validate MANIFEST (- for stdin) and add its rows to the ledger (all or nothing; reloading is a no-op);
    say how many signed URLs of the pending rows expire too soon, and the earliest expiry."""
    from uploader.cli.stdin import spooled_manifest
    from uploader.ledger import new_ledger_file
    from uploader.load import prefetch_sha256, prepare_load

    options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
    created = new_ledger_file(ledger)  # removed again if the load fails
    led: Ledger | None = None
    with (
        spooled_manifest(manifest, fmt) as (path, label),
        prepare_load(path or manifest, options, new_ledger=created is not None, label=label) as prepared,
    ):
        prefetch_sha256(path or manifest)  # after the slice readers forked, while the ledger is made
        try:
            report = prepared.load_new(created) if created is not None else None  # without SQLAlchemy
            if report is None:
                led = _open_ledger(ledger)
                report = prepared.load(led)
        except UploaderError:
            _discard_if_new(led, created, ledger)
            raise
    if report.signed_possible and led is None:
        led = _open_ledger(ledger)
    print_load(report, json_mode(), quiet_mode(), signed=_signed_urls(led, min_url_validity, report))


#: The `extra` key (and JSON summary key) of the rows `run`'s load held back as conflicts.
HELD_BACK = "held_back_conflicts"


def _on_load(
    led: Ledger, min_url_validity: dt.timedelta, as_json: bool, quiet: bool, extra: dict[str, Any]
) -> Callable[[LoadReport], None]:
    """What `run` says after loading its manifest: the load and the pending rows' signed URLs in text; in
    JSON mode the signed URLs go into `extra` (keys of the summary); with --quiet, nothing. The rows the load
    held back as conflicts (sent before with another payload) go into `extra` as `held_back_conflicts`."""

    def on_load(report: LoadReport) -> None:
        extra[HELD_BACK] = report.conflicts
        if quiet and not as_json:
            return
        signed = _signed_urls(led, min_url_validity, report)
        if as_json:
            extra["signed_urls"] = signed_dict(signed)
        else:
            print_load(report, counts=led.counts(), signed=signed)

    return on_load


def _signed_urls(led: Ledger | None, min_url_validity: dt.timedelta, report: LoadReport) -> SignedUrls:
    """The pending rows' signed URLs and their expiry, against now + --min-url-validity; none, without
    scanning the ledger (`led` may then be None), when the load knows that no pending row holds one
    (`report.signed_possible`)."""
    from uploader.ledger import utcnow
    from uploader.manifest import SignedUrls

    not_before = utcnow() + min_url_validity
    if not report.signed_possible:
        return SignedUrls(not_before)
    from uploader.send import signed_urls

    assert led is not None
    return signed_urls(led, not_before)


def _discard_if_new(led: Ledger | None, created: Path | None, ledger: str | None = None) -> None:
    """A ledger file this command created and nobody filled is removed: a failed load leaves nothing. Never
    one another process has open or has written to (Ledger.discard_if_unused checks both under a lock).
    `led` None: the load went on a bare connection (PreparedLoad.load_new); the file is opened here to look."""
    if created is None or not created.exists():
        return
    if led is None:
        try:
            led = _open_ledger(ledger)
        except UploaderError:  # what is told is the load's own error, not this one
            return
    led.discard_if_unused()


@cli.command()
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def status(ledger: str | None, as_json: bool) -> None:
    """Show how many jobs are in each state (per project too, if several), the error codes, and the live workers."""
    from uploader.cli.hints import repeat_from_context
    from uploader.ledger import never_checked, project_counts, sync_counts, url_verdict_counts

    led = _open_ledger(ledger, create=False)
    with led.snapshot() as snapshot:  # every figure from one moment: a run may be recording meanwhile
        report = led.status(snapshot)
        attachments = {"never_checked": never_checked(snapshot), "urls": url_verdict_counts(snapshot)}
        projects, platform = project_counts(snapshot), sync_counts(snapshot)
    print_status(
        report,
        as_json,
        repeat_from_context(),
        projects=projects,
        attachments=attachments,
        quiet=quiet_mode(),
        platform=platform,
    )


@cli.command()
@ledger_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (default: stdout).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "parquet"]),
    help="Default: from -o, else csv (jsonl with --json).",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    help="Only rows in this state (as `uploader status` counts them), or with this platform status when the "
    "word is no state (`completed`; repeatable).",
)
@click.option(
    "--platform-status",
    "platform_statuses",
    multiple=True,
    help="Only rows whose job has this platform status, as `uploader sync` recorded it (`failed` here is the "
    "platform's word; repeatable).",
)
@click.option(
    "--spreadsheet-safe",
    is_flag=True,
    help="CSV: prefix every cell starting with = + - @ (or tab, CR) with ' so a spreadsheet shows it "
    "as text. Without it only the API's messages are; ids and manifest values stay verbatim.",
)
@_handle_errors
def export(
    ledger: str | None,
    output: str | None,
    fmt: str | None,
    statuses: tuple[str, ...],
    platform_statuses: tuple[str, ...],
    spreadsheet_safe: bool,
) -> None:
    """Write reference_id → job_id (with status, errors and the manifest's extra columns)."""
    from uploader.export import FORMATS, export_rows, parquet_types
    from uploader.ledger import EXPORT_COLUMNS, RESULT_STATUSES, Status, sync_counts

    words = set(RESULT_STATUSES)
    if not set(statuses) | set(platform_statuses) <= words | {s.value for s in Status}:
        words |= {str(w) for w in sync_counts(_open_ledger(ledger, create=False).engine)["by_status"]}  # synced
    for option, given, valid in (
        ("--status", statuses, words | {s.value for s in Status}),
        ("--platform-status", platform_statuses, words),
    ):
        for s in given:
            if s not in valid:
                raise UsageError(f"{option} {s!r}: choose from {', '.join(sorted(valid))}")
    as_json = json_mode()
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = {"ndjson": "jsonl"}.get(suffix, suffix) if suffix in (*FORMATS, "ndjson") else None
        fmt = fmt or ("jsonl" if as_json else "csv")
    if as_json and not output and fmt != "jsonl":
        raise UsageError(f"--json writes JSON lines to stdout; {fmt} needs -o FILE")
    if fmt == "parquet" and not output:
        raise UsageError("Parquet export needs -o FILE")
    if spreadsheet_safe and fmt != "csv":
        raise UsageError(f"--spreadsheet-safe is for CSV; {fmt} keeps every value verbatim")
    if output:
        _not_the_ledger(output, ledger)
    led = _open_ledger(ledger, create=False)
    extras = led.extra_columns()
    columns = [*EXPORT_COLUMNS, *extras]
    selected = functools.partial(led.export_rows, statuses, platform_statuses=platform_statuses)
    types = parquet_types(selected(), extras) if fmt == "parquet" and extras else None
    n = export_rows(selected(), fmt, output, columns, spreadsheet_safe=spreadsheet_safe, types=types)
    if output:
        if as_json:
            click.echo(json.dumps({"rows": n, "output": output, "format": fmt}))
        else:
            click.echo(f"wrote {plural(n, 'row')} to {output}", err=True)


@cli.command(cls=UploaderCommand)
@ledger_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    default="report.html",
    show_default=True,
    help="Write the page to FILE.",
)
@_handle_errors
def report(ledger: str | None, output: str) -> None:
    """Write one HTML page of the ledger (opens offline, prints): totals, throughput, errors and what to do."""
    import platform
    import shlex
    from importlib.metadata import version

    from uploader.cli.hints import hide_password
    from uploader.cli.report import Provenance, render_report
    from uploader.export import write_output
    from uploader.ledger import report_data, utcnow

    _not_the_ledger(output, ledger)
    led = _open_ledger(ledger, create=False)
    data = report_data(led.engine)
    given = ["--ledger", hide_password(ledger)] if ledger else []
    command = shlex.join(["uploader", "report", *given, "-o", output])
    versions = {
        "uploader": __version__,
        "Python": platform.python_version(),
        "SQLAlchemy": version("SQLAlchemy"),
        "database": led.engine.dialect.name,
    }
    page = render_report(data, Provenance(command, led.name, utcnow(), versions))
    write_output(output, lambda f: f.write(page.encode("utf-8")))  # whole or not at all; errors in one line
    if json_mode():
        click.echo(json.dumps({"output": output, "bytes": len(page.encode()), "total": data.total}))
    elif not quiet_mode():
        click.echo(f"wrote the report of {plural(data.total, 'job')} to {output}", err=True)


@cli.command()
@ledger_option
@click.option("--error-code", "codes", multiple=True, help="Retry failed rows with this error code (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Retry every failed row.")
@click.option(
    "--blocked",
    is_flag=True,
    help="Release every blocked row (its attachment failed the preflight) once you have fixed it; "
    "the next preflight checks its URLs again.",
)
@_handle_errors
def retry(ledger: str | None, codes: tuple[str, ...], everything: bool, blocked: bool) -> None:
    """Put failed (or blocked) rows back to pending (attempts reset) so the next run sends them again."""
    from uploader.cli.hints import repeat_from_context
    from uploader.cli.output import retry_report

    if not codes and not everything and not blocked:
        raise UsageError("give --error-code CODE (repeatable), --all or --blocked")
    led = _open_ledger(ledger, create=False)
    released = None
    if blocked:
        from uploader.ledger import release_blocked

        released = release_blocked(led.engine)
    n, failed, payloadless = None, {}, 0
    if codes or everything:
        failed = led.failed_codes()  # before: the codes there were
        payloadless = led.payloadless(codes, everything)
        n = led.retry(codes, everything)
    retry_report(n, codes, failed, json_mode(), repeat_from_context(), blocked=released, payloadless=payloadless)


def _api_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--api-key",
                help="API key (seen by `ps` on the command line: prefer --api-key-file or the environment).",
            ),
            click.option(
                "--api-key-file",
                metavar="PATH",
                help="Read the API key from this file (one trailing newline is dropped).",
            ),
            click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True, help="API base URL."),
            click.option("--allow-http", is_flag=True, help="Allow plain http to a host that is not loopback."),
            click.option(
                "--sandbox",
                "use_sandbox",
                is_flag=True,
                help="Start the built-in API emulator on loopback and use it (no key needed).",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=30.0,
                show_default=True,
                help="Seconds before a request is abandoned (and retried).",
            ),
        ]
    ):
        func = decorator(func)
    return func


def _api_key(api_key: str | None, api_key_file: str | None) -> str | None:
    """The key from --api-key or --api-key-file, whichever came from the higher-ranked source (flag >
    environment > profile; uploader.cli.config.pick_api_key)."""
    from click.core import ParameterSource

    from uploader.cli.config import pick_api_key

    ctx = click.get_current_context()
    rank = {ParameterSource.COMMANDLINE: 0, ParameterSource.ENVIRONMENT: 1, ParameterSource.DEFAULT_MAP: 2}

    def rank_of(name: str) -> int:
        source = ctx.get_parameter_source(name)
        return rank.get(source, 3) if source is not None else 3

    return pick_api_key(api_key, rank_of("api_key"), api_key_file, rank_of("api_key_file"))


#: The pace of a command's requests (run, sync, adopt): pacing.RateLimiter.
rate_option = click.option(
    "--rate",
    type=click.FloatRange(min=0.001, max=1_000_000),
    metavar="R",
    help="At most R requests in any one-second window (R below 1: one request every 1/R s; above 1, "
    "whole requests: 2.5 sends at most 2 a second).",
)


#: How long a Retry-After from the API may make a command wait (run, reconcile, sync, adopt).
max_retry_after_option = click.option(
    "--max-retry-after",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="The longest wait a Retry-After from the API may impose; a longer one is cut to this.",
)


def _endpoint(
    api_key: str | None,
    base_url: str,
    allow_http: bool,
    use_sandbox: bool,
    stack: ExitStack,
    api_key_file: str | None = None,
) -> tuple[str, str]:
    """Where to send and with which key; starts the sandbox for --sandbox."""
    from uploader.api import check_api_key, check_base_url

    if use_sandbox:
        from uploader.sandbox import Sandbox

        box = stack.enter_context(Sandbox())
        if not quiet_mode():
            click.echo(f"sandbox: API emulator at {box.base_url}", err=True)
        return box.base_url, box.api_key
    api_key = _api_key(api_key, api_key_file)
    if not api_key:
        raise UsageError("no API key: set PLAYMENT_API_KEY, pass --api-key-file PATH or --api-key (or try --sandbox)")
    return check_base_url(base_url, allow_http), check_api_key(api_key)  # both before any ledger is touched


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@click.option(
    "--batch-name",
    help="Create this batch once (id kept in the ledger) and put the jobs without a batch in it; rows of "
    "other projects than --project-id's go into a batch of this name in their own project.",
)
@click.option(
    "--default-batch",
    is_flag=True,
    help="Put rows without a batch in the project's default batch, not in the batch the ledger "
    "creates for them (then a job whose answer was lost can be found only once another job "
    "of the run has succeeded).",
)
@ledger_option
@_api_options
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="At most this many requests in the air at once (the run starts lower and grows).",
)
@rate_option
@max_retry_after_option
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 100),
    default=8,
    show_default=True,
    help="Sends of one row before it fails (a 429 or an unreachable API does not count).",
)
@click.option(
    "--lease-seconds",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    metavar="S",
    help="How long a claimed row stays reserved to this run without a heartbeat (renewed every S/4 s); "
    "after that, runs sharing the ledger take it over. Shorter: faster takeover of a dead "
    "machine's rows, but a run stalled for longer than S loses its rows (its late answers are "
    "ignored, never recorded).",
)
@click.option(
    "--preflight",
    is_flag=True,
    help="Before sending, check every pending row's attachment URLs (as `uploader check` does) and block "
    "the rows whose image or frames would not open.",
)
@click.option(
    "--allow-blocked",
    is_flag=True,
    help="Send blocked rows too (released to pending first); with --preflight, bad attachments are "
    "reported but not blocked.",
)
@preflight_options
@url_ttl_option
@_handle_errors
def run(
    manifest: Path | None,
    project_id: str | None,
    work_flow_id: str | None,
    batch_id: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    sign: bool,
    batch_name: str | None,
    default_batch: bool,
    ledger: str | None,
    api_key: str | None,
    api_key_file: str | None,
    base_url: str,
    allow_http: bool,
    use_sandbox: bool,
    timeout: float,
    concurrency: int,
    rate: float | None,
    max_retry_after: float,
    max_attempts: int,
    lease_seconds: float,
    preflight: bool,
    allow_blocked: bool,
    check_concurrency: int,
    per_host_rate: float,
    check_timeout: float,
    recheck_after: dt.timedelta | None,
    min_url_validity: dt.timedelta,
    url_ttl: dt.timedelta,
) -> None:
    """Load MANIFEST (if given; - for stdin) and send every pending job; rerun the same command to resume."""
    _start_early(manifest, ledger)
    from uploader.api import settle_warm_up
    from uploader.cli.forgetting import project_hint
    from uploader.cli.hints import repeat_from_context
    from uploader.cli.stdin import spooled_manifest
    from uploader.errors import FatalApiError
    from uploader.ledger import new_ledger_file
    from uploader.send import RunOptions, StopFlag, run_upload

    as_json, quiet = json_mode(), quiet_mode()
    stop = click.get_current_context().meta[STOP] = StopFlag()
    options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
    signer = _signer(sign, url_ttl)
    run_options = RunOptions(
        concurrency=concurrency,
        rate=rate,
        max_attempts=max_attempts,
        timeout=timeout,
        lease_seconds=lease_seconds,
        max_retry_after=max_retry_after,
        prepare_payload=signer,
    )
    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack, api_key_file)
        manifest, manifest_label = stack.enter_context(spooled_manifest(manifest, fmt))
        created = new_ledger_file(ledger) if manifest else None
        led = _open_ledger(ledger, create=bool(manifest))
        settle_warm_up()  # no thread of it left when the load forks its slice readers
        display = stack.enter_context(ProgressDisplay(quiet or as_json, silent=quiet))
        settings = None
        if allow_blocked:
            from uploader.ledger import release_blocked

            released = release_blocked(led.engine)
            if released:
                click.echo(f"--allow-blocked: {rows_are(released)} pending again", err=True)
        if preflight:
            settings = preflight_settings(
                check_concurrency,
                per_host_rate,
                check_timeout,
                recheck_after,
                min_url_validity,
                block=not allow_blocked,
                sign_url=signer.sign_url if signer else None,
            )
        before_send = _before_send(signer, settings, as_json or quiet, not allow_blocked)
        extra: dict[str, Any] = {}  #: keys of the JSON summary: the load's signed URLs
        told: list[str] = []  #: the run's notices before its summary (a batch created, a clock skew)

        if manifest is None and not (as_json or quiet):  # a resume from the ledger alone: say how far it got
            print_resume(led.url, led.counts(), loaded=False)
        try:
            summary = run_upload(
                led,
                manifest,
                options,
                base_url=url,
                api_key=key,
                run_options=run_options,
                batch_name=batch_name,
                on_load=_on_load(led, min_url_validity, as_json, quiet, extra),
                on_progress=display.update,
                default_batch=default_batch,
                stop=stop,
                on_notice=_notices(quiet, told),
                manifest_label=manifest_label,
                before_send=before_send,
            )
        except FatalApiError as exc:
            display.close()
            partial = getattr(exc, "summary", None)  # the run's summary, when the fatal error carries one
            hint = project_hint(exc, led, repeat_from_context())
            message = f"{exc}\n{hint}" if hint is not None else str(exc)
            if partial is not None and as_json:  # one document on stdout: the summary with the error
                click.echo(
                    json.dumps(
                        {**partial.as_dict(), "error": message, "exit": exc.exit_code, "code": exc.code}, indent=2
                    )
                )
                document_printed()
            if hint is not None:
                raise FatalApiError(message, exc.code, exc.http_status, exc.project_id) from None
            raise
        except UploaderError:
            _discard_if_new(led, created)
            raise
        display.close()
    if told:
        extra["notices"] = [*told, *summary.progress.notices]
    print_summary(summary, as_json, repeat_from_context(), quiet=quiet, extra=extra)
    if summary.interrupted:
        hold_signals()
        click.echo("interrupted: everything recorded is in the ledger; run the same command again to resume.", err=True)
        sys.exit(128 + (stop.signum or 2))
    counts = summary.counts
    if (
        extra.get(HELD_BACK)  # rows whose job may hold other data than the manifest now says (as `plan` exits)
        or counts["failed"]
        or counts["uncertain"]
        or counts["conflict"]
        or counts["pending"]
        or counts["in_flight"]
        or counts.get("blocked")
    ):
        sys.exit(EXIT_SOME_FAILED)


def _start_early(manifest: Path | None, ledger: str | None) -> None:
    """What `run` starts on threads before it imports SQLAlchemy and opens the ledger: the manifest's hash, and
    for a new ledger (which will send: a rerun may send nothing, and then imports no HTTP library) the HTTP
    stack's imports and certificates."""
    from uploader.ledger import new_ledger_file

    if manifest is not None and new_ledger_file(ledger) is not None:
        from uploader.api import warm_up

        warm_up()
    from uploader.cli.stdin import read_once

    if manifest is not None and str(manifest) != "-" and not read_once(manifest):  # a pipe is read once, spooled
        from uploader.load import prefetch_sha256

        prefetch_sha256(manifest)


def _signer(sign: bool, url_ttl: dt.timedelta) -> PayloadSigner | None:
    """The signer of --sign (storage URLs signed just before each send), or None."""
    if not sign:
        return None
    from uploader.storage import PayloadSigner

    return PayloadSigner(url_ttl)


def _before_send(
    signer: PayloadSigner | None, settings: PreflightOptions | None, as_json: bool, blocking: bool
) -> Callable[[Ledger], Awaitable[None]]:
    """The run's `before_send` (after the load): the signer of --sign made ready for the pending rows'
    providers, or storage URLs refused without it (`ready_for_pending`); with --preflight, the preflight."""
    preflight = _preflight_step(settings, as_json, blocking) if settings is not None else None

    async def step(led: Ledger) -> None:
        from uploader.send import ready_for_pending

        ready_for_pending(led, signer)
        if preflight is not None:
            await preflight(led)

    return step


def _preflight_step(settings: PreflightOptions, as_json: bool, blocking: bool) -> Callable[[Ledger], Awaitable[None]]:
    """The run's `before_send`: the preflight, its report on stderr (JSON mode: nothing until the summary)."""
    from uploader.cli.hints import repeat_from_context
    from uploader.send import check_attachments

    repeat = repeat_from_context()

    async def step(led: Ledger) -> None:
        report = await check_attachments(led, settings)
        if not as_json:
            print_preflight(report, False, repeat, blocking, err=True)

    return step


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@ledger_option
@min_url_validity_option("Count as held back the rows whose signed URL expires sooner than this from now.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@_handle_errors
def plan(
    manifest: Path,
    project_id: str | None,
    work_flow_id: str | None,
    batch_id: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    sign: bool,
    ledger: str | None,
    min_url_validity: dt.timedelta,
    as_json: bool,
) -> None:
    """Show what `uploader run MANIFEST` would do — new, unchanged, changed and conflicting rows, what it would
    send and hold back, the batch, the first payload — without sending or writing anything (exit 3 when
    something would be held back)."""
    from uploader.cli.planning import run_plan

    options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
    run_plan(manifest, options, ledger, min_url_validity, as_json)


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@ledger_option
@preflight_options
@url_ttl_option
@click.option(
    "--sample",
    type=click.IntRange(1, 100_000),
    metavar="N",
    help="Check only N random URLs per host and report each host's failure rate (blocks nothing): "
    "for manifests too big to check whole.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def check(
    manifest: Path | None,
    project_id: str | None,
    work_flow_id: str | None,
    batch_id: str | None,
    fmt: str | None,
    columns: tuple[str, ...],
    sign: bool,
    ledger: str | None,
    check_concurrency: int,
    per_host_rate: float,
    check_timeout: float,
    recheck_after: dt.timedelta | None,
    min_url_validity: dt.timedelta,
    url_ttl: dt.timedelta,
    sample: int | None,
    as_json: bool,
) -> None:
    """Load MANIFEST (if given) and check that every pending row's attachments open; block the rows whose
    image or frames would not (exit 3 when any is blocked). Sends no job."""
    from uploader.api import run_loop
    from uploader.cli.hints import repeat_from_context
    from uploader.cli.stdin import spooled_manifest
    from uploader.ledger import new_ledger_file
    from uploader.load import load as load_manifest
    from uploader.send import check_attachments

    signer = _signer(sign, url_ttl)
    created = new_ledger_file(ledger) if manifest else None
    led = _open_ledger(ledger, create=bool(manifest))
    if manifest is not None:
        options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
        with spooled_manifest(manifest, fmt) as (path, label):
            try:
                report = load_manifest(led, path or manifest, options, label)
            except UploaderError:
                _discard_if_new(led, created)
                raise
        if not as_json:
            print_load(report)
    from uploader.send import ready_for_pending

    ready_for_pending(led, signer)
    settings = preflight_settings(
        check_concurrency,
        per_host_rate,
        check_timeout,
        recheck_after,
        min_url_validity,
        sign_url=signer.sign_url if signer else None,
    )
    if sample is not None:
        from uploader.cli.preflight import print_sample
        from uploader.send import sample_attachments

        print_sample(run_loop(sample_attachments(led, sample, settings)), as_json)
        return
    result = run_loop(check_attachments(led, settings))
    if as_json:
        print_preflight(result, True)
    else:
        print_preflight(result, False, repeat_from_context())
    if result.bad_rows:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@_api_options
@max_retry_after_option
@_handle_errors
def reconcile(
    ledger: str | None,
    api_key: str | None,
    api_key_file: str | None,
    base_url: str,
    allow_http: bool,
    use_sandbox: bool,
    timeout: float,
    max_retry_after: float,
) -> None:
    """Look up the job_ids of `uncertain` rows (jobs that exist at the API) by listing their batches."""
    from uploader.cli.output import uncertain_reasons
    from uploader.send import reconcile as do_reconcile

    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack, api_key_file)
        led = _open_ledger(ledger, create=False)
        pending_before = led.counts()["pending"]
        resolved, remaining = do_reconcile(
            led, base_url=url, api_key=key, timeout=timeout, max_retry_after=max_retry_after
        )
    counts = led.counts()
    conflicts, requeued = counts["conflict"], max(0, counts["pending"] - pending_before)
    from uploader.cli.hints import repeat_from_context

    repeat = repeat_from_context()
    reasons = uncertain_reasons(led.uncertain_groups(), repeat) if remaining else []
    if json_mode():
        click.echo(
            json.dumps(
                {
                    "resolved": resolved,
                    "uncertain": remaining,
                    "conflict": conflicts,
                    "pending_again": requeued,
                    "why_uncertain": reasons,
                },
                indent=2,
            )
        )
    else:
        click.echo(f"{plural(resolved, 'uncertain row')} resolved, {remaining} still uncertain.")
    if requeued and not json_mode() and not quiet_mode():
        click.echo(
            f"{rows_are(requeued)} pending again (their batch's listing did not show them: not created, or not "
            f"yet): `{repeat.command('run', api=True)}` sends them, and the API refuses a twin with FS_0001."
        )
    if not json_mode() and not quiet_mode():
        for reason in reasons:
            click.echo(reason)
    if conflicts and not json_mode() and not quiet_mode():
        from uploader.cli.output import conflict_hint

        click.echo(conflict_hint(conflicts, repeat_from_context()))
    if remaining or conflicts:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@_api_options
@click.option(
    "--results",
    "results_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Download the results of final jobs into DIR as <reference_id>.json (default: statuses only).",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=30.0,
    default=None,
    metavar="[SECONDS]",
    help="Repeat every SECONDS (default 30) until every job is final.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Requests in flight at once (job reads and result downloads).",
)
@click.option(
    "--max-result-bytes",
    type=ByteSize(),
    default=64 << 20,
    show_default="64Mi",
    metavar="SIZE",
    help="The largest result downloaded (bytes, or 64Mi, 1G); a bigger one is recorded as an error.",
)
@rate_option
@max_retry_after_option
@_handle_errors
def sync(
    ledger: str | None,
    api_key: str | None,
    api_key_file: str | None,
    base_url: str,
    allow_http: bool,
    use_sandbox: bool,
    timeout: float,
    results_dir: Path | None,
    watch: float | None,
    concurrency: int,
    max_result_bytes: int,
    rate: float | None,
    max_retry_after: float,
) -> None:
    """Record each sent job's platform status (from batch listings) and download the results of final jobs."""
    from uploader.send import SyncReport
    from uploader.send import sync_ledger as do_sync

    def shown(report: SyncReport) -> None:
        if json_mode() or quiet_mode():
            return
        counts = report.counts
        words = ", ".join(  # "None": rows with no status recorded yet (tracking.sync_counts)
            f"{n} {'with no status' if s == 'None' else s or '(none)'}"
            for s, n in sorted(counts["by_status"].items(), key=str)
        )
        click.echo(
            f"{counts['final']} / {counts['tracked']} jobs final ({words}); {report.changed} changed, "
            f"{report.results} results fetched, {len(report.result_errors)} failed; "
            f"{report.pages} listing and {report.job_reads} job requests."
        )
        if report.mismatched:
            click.echo(
                f"the batch listing named the job of {plural(report.mismatched, 'row')} for another reference_id: "
                "nothing recorded from it; each was read on its own (GET job)",
                err=True,
            )

    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack, api_key_file)
        led = _open_ledger(ledger, create=False)
        display = stack.enter_context(SyncDisplay(quiet_mode() or json_mode(), silent=quiet_mode()))

        def show(report: SyncReport) -> None:
            display.close()  # the round's line replaces its bar (a new bar for the next --watch round)
            shown(report)

        report = do_sync(
            led,
            base_url=url,
            api_key=key,
            results_dir=results_dir,
            timeout=timeout,
            concurrency=concurrency,
            max_result_bytes=max_result_bytes,
            max_retry_after=max_retry_after,
            watch=watch,
            on_round=show,
            rate=rate,
            on_progress=display.update,
        )
    if json_mode():
        click.echo(
            json.dumps(
                {
                    "batches": report.batches,
                    "listing_requests": report.pages,
                    "job_requests": report.job_reads,
                    "changed": report.changed,
                    "listing_mismatches": report.mismatched,
                    "jobs_not_found": len(report.not_found),
                    "jobs_not_found_examples": [
                        {"reference_id": ref, "job_id": job} for ref, job in report.not_found[:20]
                    ],
                    "results_fetched": report.results,
                    "failed_results": report.result_errors,
                    **report.counts,
                },
                indent=2,
            )
        )
    else:  # errors: printed with -q too
        for error in report.result_errors[:10]:
            click.echo(f"result not fetched: {error}", err=True)
        if report.not_found:
            from uploader.cli.output import not_found_text

            click.echo(not_found_text(report.not_found), err=True)
    if report.result_errors or report.not_found:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@_api_options
@click.option("--project-id", required=True, help="The project whose batches hold the jobs.")
@click.option(
    "--batch-id", "batch_ids", multiple=True, required=True, help="A batch whose jobs to record (repeatable)."
)
@rate_option
@max_retry_after_option
@_handle_errors
def adopt(
    ledger: str | None,
    api_key: str | None,
    api_key_file: str | None,
    base_url: str,
    allow_http: bool,
    use_sandbox: bool,
    timeout: float,
    project_id: str,
    batch_ids: tuple[str, ...],
    rate: float | None,
    max_retry_after: float,
) -> None:
    """Record jobs created elsewhere (the UI, the SDK, another ledger): `run` then sends nothing for them."""
    from uploader.ledger import new_ledger_file
    from uploader.send import adopt as do_adopt

    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack, api_key_file)
        created = new_ledger_file(ledger)  # removed again if nothing could be adopted into it
        led = _open_ledger(ledger, create=True)
        try:
            done = do_adopt(
                led,
                project_id,
                batch_ids,
                base_url=url,
                api_key=key,
                timeout=timeout,
                max_retry_after=max_retry_after,
                rate=rate,
            )
        except BaseException:
            _discard_if_new(led, created)
            raise
    if json_mode():
        click.echo(
            json.dumps(
                {
                    "adopted": done.adopted,
                    "added": done.added,
                    "already_known": done.known,
                    "conflicts": [{"reference_id": r, "ledger": w} for r, w in done.conflicts],
                    "unfinished_listings": done.unfinished,
                },
                indent=2,
            )
        )
    elif not quiet_mode():
        click.echo(
            f"{plural(done.adopted, 'row')} adopted, {plural(done.added, 'job')} with no row added, "
            f"{done.known} already known, {plural(len(done.conflicts), 'conflict')}."
        )
        for reference_id, held in done.conflicts[:20]:
            click.echo(f"conflict: {reference_id}: the ledger holds {held}; left unchanged", err=True)
    for problem in done.unfinished:
        click.echo(f"{problem}: jobs it did not show were not adopted; adopt again later", err=True)
    if done.conflicts or done.unfinished:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@click.option("--project-id", help="Only rows of this project.")
@click.option("--status", "statuses", multiple=True, help="Only rows in this state (repeatable).")
@click.option(
    "--reference-id-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Only these reference_ids: a text file, one a line.",
)
@click.option("--manifest", help="Only rows loaded from this manifest (the path it was loaded as; - for stdin).")
@click.option(
    "--include-created",
    is_flag=True,
    help="Also forget rows whose job exists (or may) at the API: their job_ids are lost, and loading "
    "them again sends them again. Asks first.",
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed with --include-created without a terminal).")
@_handle_errors
def forget(  # type: ignore[no-untyped-def]
    ledger,
    project_id,
    statuses,
    reference_id_file,
    manifest,
    include_created,
    yes,
) -> None:
    """Remove rows from the ledger (at least one filter); rows whose job exists are kept unless --include-created."""
    from dataclasses import replace

    from uploader.cli.forgetting import confirm_forget, forget_selection, print_forgotten, recorded_manifest
    from uploader.ledger import count_forget, forget_rows, manifest_paths

    selection = forget_selection(project_id, statuses, reference_id_file, manifest)
    led = _open_ledger(ledger, create=False)
    if selection.manifest is not None:
        selection = replace(selection, manifest=recorded_manifest(selection.manifest, manifest_paths(led.engine)))
    if include_created:
        confirm_forget(count_forget(led.engine, selection), yes)
    print_forgotten(
        forget_rows(led.engine, selection, include_created=include_created),
        None if include_created else count_forget(led.engine, selection),
        json_mode(),
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option("--api-key", default="sandbox-key", show_default=True, help="The key the sandbox accepts.")
@click.option("--latency-ms", type=float, default=0.0, help="Fixed latency of each job request.")
@click.option("--jitter-ms", type=float, default=0.0, help="Random extra latency, uniform in [0, J].")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 500 FS_0000.")
@click.option("--html-error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 502 HTML.")
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction whose connection is dropped after the job was created.",
)
@click.option("--rate-limit", type=click.FloatRange(min=0.1), help="Requests/s; excess answered 429.")
@click.option("--slow-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered after --slow-ms.")
@click.option("--slow-ms", type=float, default=0.0, help="How late the --slow-rate answers come.")
@click.option("--legacy", is_flag=True, help="Errors as HTTP 200 + success:false; 401 with an empty body.")
@click.option(
    "--retry-after",
    "retry_after_s",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Retry-After seconds sent with a 429.",
)
@click.option("--seed", type=int, help="Seed for repeatable faults.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), help="Persist state here.")
@click.option(
    "--project",
    "projects",
    multiple=True,
    help="Serve only these projects (repeatable); others get resource_error. Default: any project.",
)
@click.option(
    "--forbidden-project",
    "forbidden",
    multiple=True,
    help="A project the key may not use: answered `unauthorized` (repeatable).",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Jobs per page when listing a batch.",
)
@click.option(
    "--check-attachments",
    is_flag=True,
    help="Answer FS_0007 for a job whose image or frame is one of the sandbox's own files "
    "(/_sandbox/files/...) that would not open.",
)
@click.option(
    "--complete-after",
    "complete_after_s",
    type=click.FloatRange(min=0),
    help="Seconds after creation when a job becomes completed (or rejected); default: never.",
)
@click.option(
    "--complete-jitter",
    "complete_jitter_s",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Each job completes up to this many seconds earlier or later.",
)
@click.option(
    "--reject-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of jobs that end rejected instead of completed.",
)
@click.option(
    "--result-failure",
    type=click.Choice(["403", "html"]),
    help="Answer every result URL with a 403 or an HTML page (to test result downloads).",
)
@_handle_errors
def sandbox(
    host: str,
    port: int,
    api_key: str,
    latency_ms: float,
    jitter_ms: float,
    error_rate: float,
    html_error_rate: float,
    drop_rate: float,
    rate_limit: float | None,
    slow_rate: float,
    slow_ms: float,
    legacy: bool,
    retry_after_s: int,
    seed: int | None,
    state_file: Path | None,
    projects: tuple[str, ...],
    forbidden: tuple[str, ...],
    page_size: int,
    check_attachments: bool,
    complete_after_s: float | None,
    complete_jitter_s: float,
    reject_rate: float,
    result_failure: str | None,
) -> None:
    """Serve a local emulator of the GT Studio job API (with fault injection) until Ctrl-C."""
    from uploader.sandbox import SandboxConfig, serve

    try:
        config = SandboxConfig(
            api_key=api_key,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            error_rate=error_rate,
            html_error_rate=html_error_rate,
            drop_rate=drop_rate,
            rate_limit=rate_limit,
            slow_rate=slow_rate,
            slow_ms=slow_ms,
            legacy=legacy,
            retry_after_s=retry_after_s,
            seed=seed,
            state_file=state_file,
            projects=frozenset(projects) if projects else None,
            forbidden_projects=frozenset(forbidden),
            page_size=page_size,
            check_attachments=check_attachments,
            complete_after_s=complete_after_s,
            complete_jitter_s=complete_jitter_s,
            reject_rate=reject_rate,
            result_failure=result_failure or "",
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def ready(url: str) -> None:
        if json_mode():
            click.echo(json.dumps({"base_url": url, "api_key": api_key}), nl=True)
            sys.stdout.flush()
            return
        click.echo(f"sandbox serving the GT Studio job API at {url}")
        click.echo(f"API key: {api_key}")
        click.echo(
            f"try: uploader run sample_manifests/images.csv --project-id demo --work-flow-id wf "
            f"--base-url {url} --api-key {api_key}"
        )
        click.echo("Ctrl-C to stop.")

    try:
        serve(config, host=host, port=port, on_ready=ready)
    except OSError as exc:
        raise UploaderError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@cli.command()
@click.argument("reference_id")
@click.option("--project-id", help="The row's project, when the reference_id is in more than one.")
@ledger_option
@_handle_errors
def show(reference_id: str, project_id: str | None, ledger: str | None) -> None:
    """Show one row: its payload, state, job_id, attempts, last error (code, message, details) and times."""
    from uploader.cli.output import print_row

    rows = _open_ledger(ledger, create=False).row(reference_id, project_id)
    if not rows:
        where = f" in project {project_id!r}" if project_id else ""
        raise UploaderError(f"no row with reference_id {reference_id!r}{where}")
    if len(rows) > 1:
        projects = ", ".join(repr(r["project_id"]) for r in rows)
        raise UsageError(f"reference_id {reference_id!r} is in {len(rows)} projects ({projects}): add --project-id")
    print_row(rows[0], json_mode())


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("command", required=False, default="run", metavar="[COMMAND [OPTIONS]]")
@click.pass_context
@_handle_errors
def config(ctx: click.Context, command: str) -> None:
    """Show the settings COMMAND (default: run) would use with OPTIONS, and where each comes from: flag, env
    VAR, FILE:PROFILE or default. The API key is shown as set or unset, never its value."""
    from uploader.cli.output import print_settings
    from uploader.cli.settings import resolved_settings

    group = ctx.parent.command if ctx.parent is not None else cli
    target = group.commands.get(command) if isinstance(group, click.Group) else None
    if target is None or command == "config":
        raise UsageError(
            f"no command {command!r}: choose from {', '.join(n for n in cli.list_commands(ctx) if n != 'config')}"
        )
    print_settings(resolved_settings(ctx, command, target, ctx.args), json_mode())


def main(held: set[int | signal.Signals] | None = None) -> None:
    """The command line, as click runs it (ends with SystemExit). `held`: the signal mask to restore once the
    handlers are in place (`entry` blocks Ctrl-C and SIGTERM while it imports this module)."""
    standard_streams()
    _terminate_as_interrupt()
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held until now is handled here
    cli(prog_name="uploader")


def entry(held: set[int | signal.Signals] | None = None) -> NoReturn:
    """The `uploader` program (and `python -m uploader`): `main`, then `quick_exit`. Code that calls `main`
    itself keeps the usual exit. A signal outside the command's own handling (before click has read the
    command line, or once the command has ended) stops it all the same: 130/143, never click's "Aborted!"."""
    try:
        main(held)
    except SystemExit as exc:
        hold_signals()  # the command has ended: a signal now changes nothing
        quick_exit(exit_status(exc.code))
    except KeyboardInterrupt:
        try:
            interrupted(json_asked(sys.argv[1:]))
        except SystemExit as exc:
            quick_exit(exit_status(exc.code))
    hold_signals()
    quick_exit(0)


def quick_exit(code: int) -> NoReturn:
    """End the process with `os._exit` once stdout, stderr and logging are flushed. When a command has
    returned, its ledger is closed and its files are in place; what the interpreter's teardown would still
    do is free each object of SQLAlchemy and aiohttp one by one, tens of milliseconds of every command."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader left, or the stream is closed: as Python's own exit says
            code = code or 120
    logging = sys.modules.get("logging")
    if logging is not None:  # its handlers flushed and closed, as at the interpreter's exit
        logging.shutdown()
    os._exit(code)


def exit_status(code: object) -> int:
    """The process's exit status for `sys.exit(code)`, as the interpreter makes it: None is 0, an integer
    itself, anything else is printed on stderr and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
