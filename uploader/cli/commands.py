"""The `uploader` command: a thin click layer over the library; turns errors into messages and exit codes.

Exit codes: 0 every row succeeded (or the command did what it was asked); 1 could not run (bad manifest,
ledger, API key, API unreachable); 2 usage; 3 the run finished but some rows failed, are uncertain or in conflict;
130 interrupted. How results are shown (reports, summaries, status, progress) is in uploader.cli.output.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from uploader import __version__
from uploader.api import DEFAULT_BASE_URL
from uploader.cli.output import ProgressDisplay, print_load, print_status, print_summary
from uploader.cli.preflight import preflight_options, preflight_settings, print_preflight
from uploader.cli.signing import ready_for_pending, sign_option, url_ttl_option
from uploader.errors import InterruptedRun, UploaderError, UsageError

if TYPE_CHECKING:
    from uploader.ledger import Ledger
    from uploader.manifest import ManifestOptions
    from uploader.send import PreflightOptions
    from uploader.storage import PayloadSigner

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")

EXIT_SOME_FAILED = 3


def _handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Print an UploaderError as one clear message (never a traceback) and exit with its code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except InterruptedRun:  # a signal: no error, the same words as Ctrl-C anywhere else
            click.echo("interrupted; run the same command again to resume.", err=True)
            sys.exit(InterruptedRun.exit_code)
        except UploaderError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; run the same command again to resume.", err=True)
            sys.exit(130)

    return wrapper


ledger_option = click.option(
    "--ledger",
    envvar="UPLOADER_LEDGER",
    default=None,
    metavar="PATH|URL",
    help="Ledger file or SQLAlchemy URL [env UPLOADER_LEDGER; default ./uploader.db].",
)


def _manifest_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option("--project-id", help="Project for rows without a project_id column."),
            click.option("--work-flow-id", help="Workflow for rows without a work_flow_id column."),
            click.option("--batch-id", help="Batch (UUID) for rows without a batch_id column."),
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


def _build_options(project_id: str | None, work_flow_id: str | None, batch_id: str | None, fmt: str | None,
                   columns: tuple[str, ...], sign: bool = False) -> ManifestOptions:
    from uploader.manifest import ManifestOptions

    pairs = []
    for item in columns:
        api, sep, col = item.partition("=")
        if not sep or not api or not col:
            raise UsageError(f"--column expects API_NAME=COLUMN, got {item!r}")
        pairs.append((api.strip(), col.strip()))
    return ManifestOptions(
        project_id=project_id, work_flow_id=work_flow_id, batch_id=batch_id, format=fmt, columns=tuple(pairs),
        sign=sign,
    )


def _open_ledger(ledger: str | None, create: bool = True) -> Ledger:
    """Open the ledger for this command; it is closed when the command ends (also in-process callers)."""
    from uploader.ledger import Ledger

    led = Ledger.open(ledger, create=create)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(led.close)
    return led


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uploader")
def cli() -> None:
    """Send a manifest of labeling jobs to GT Studio (Playment), crash-safe and resumable."""


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@ledger_option
@_handle_errors
def load(manifest: Path, project_id: str | None, work_flow_id: str | None, batch_id: str | None, fmt: str | None,
         columns: tuple[str, ...], sign: bool, ledger: str | None) -> None:
    """Validate MANIFEST (- for stdin) and add its rows to the ledger (all or nothing; reloading is a no-op)."""
    from uploader.cli.stdin import spooled_manifest
    from uploader.ledger import new_ledger_file
    from uploader.load import prepare_load

    options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
    created = new_ledger_file(ledger)  # removed again if the load fails
    with spooled_manifest(manifest, fmt) as (path, label), \
            prepare_load(path or manifest, options, new_ledger=created is not None, label=label) as prepared:
        led = _open_ledger(ledger)
        try:
            print_load(prepared.load(led))
        except UploaderError:
            _discard_if_new(led, created)
            raise


def _discard_if_new(led: Ledger, created: Path | None) -> None:
    """A ledger file this command created and nobody filled is removed: a failed load leaves nothing. Never
    one another process has open or has written to (Ledger.discard_if_unused checks both under a lock)."""
    if created is None:
        return
    led.discard_if_unused()


@cli.command()
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@_handle_errors
def status(ledger: str | None, as_json: bool) -> None:
    """Show how many jobs are in each state (per project too, if several), the error codes, and the live workers."""
    from uploader.cli.hints import repeat_from_context
    from uploader.ledger import project_counts

    led = _open_ledger(ledger, create=False)
    print_status(led.status(), as_json, repeat_from_context(), projects=project_counts(led.engine))


@cli.command()
@ledger_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), help="Default: from -o, else csv.")
@click.option("--status", "statuses", multiple=True, help="Only rows in this state (repeatable).")
@click.option("--spreadsheet-safe", is_flag=True,
              help="CSV: prefix every cell starting with = + - @ (or tab, CR) with ' so a spreadsheet shows it "
                   "as text. Without it only the API's messages are; ids and manifest values stay verbatim.")
@_handle_errors
def export(ledger: str | None, output: str | None, fmt: str | None, statuses: tuple[str, ...],
           spreadsheet_safe: bool) -> None:
    """Write reference_id → job_id (with status, errors and the manifest's extra columns)."""
    from uploader.export import FORMATS, export_rows
    from uploader.ledger import EXPORT_COLUMNS, Status

    valid = {s.value for s in Status}
    for s in statuses:
        if s not in valid:
            raise UsageError(f"--status {s!r}: choose from {', '.join(sorted(valid))}")
    if fmt is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output else ""
        fmt = {"ndjson": "jsonl"}.get(suffix, suffix) if suffix in (*FORMATS, "ndjson") else "csv"
    if fmt == "parquet" and not output:
        raise UsageError("Parquet export needs -o FILE")
    if spreadsheet_safe and fmt != "csv":
        raise UsageError(f"--spreadsheet-safe is for CSV; {fmt} keeps every value verbatim")
    led = _open_ledger(ledger, create=False)
    columns = [*EXPORT_COLUMNS, *led.extra_columns()]
    n = export_rows(led.export_rows(statuses), fmt, output, columns, spreadsheet_safe=spreadsheet_safe)
    if output:
        click.echo(f"wrote {n} rows to {output}", err=True)


@cli.command()
@ledger_option
@click.option("--error-code", "codes", multiple=True, help="Retry failed rows with this error code (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Retry every failed row.")
@click.option("--blocked", is_flag=True,
              help="Release every blocked row (its attachment failed the preflight) once you have fixed it; "
                   "the next preflight checks its URLs again.")
@_handle_errors
def retry(ledger: str | None, codes: tuple[str, ...], everything: bool, blocked: bool) -> None:
    """Put failed (or blocked) rows back to pending (attempts reset) so the next run sends them again."""
    if not codes and not everything and not blocked:
        raise UsageError("give --error-code CODE (repeatable), --all or --blocked")
    from uploader.cli.hints import repeat_from_context

    led = _open_ledger(ledger, create=False)
    run_hint = repeat_from_context().command("run")
    if blocked:
        from uploader.ledger import release_blocked

        released = release_blocked(led.engine)
        click.echo(f"{released} blocked rows are pending again; `{run_hint} --preflight` checks their "
                   "attachments again and sends them.")
    if codes or everything:
        n = led.retry(codes, everything)
        click.echo(f"{n} failed rows are pending again; `{run_hint}` sends them.")


def _api_options(func: F) -> F:
    for decorator in reversed(
        [
            click.option("--api-key", envvar="PLAYMENT_API_KEY", help="API key [env PLAYMENT_API_KEY].",
                         show_envvar=False),
            click.option("--base-url", envvar="PLAYMENT_BASE_URL", default=DEFAULT_BASE_URL, show_default=True,
                         help="API base URL [env PLAYMENT_BASE_URL]."),
            click.option("--allow-http", is_flag=True, help="Allow plain http to a host that is not loopback."),
            click.option("--sandbox", "use_sandbox", is_flag=True,
                         help="Start the built-in API emulator on loopback and use it (no key needed)."),
            click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
                         help="Seconds before a request is abandoned (and retried)."),
        ]
    ):
        func = decorator(func)
    return func


def _endpoint(api_key: str | None, base_url: str, allow_http: bool, use_sandbox: bool,
              stack: ExitStack) -> tuple[str, str]:
    """Where to send and with which key; starts the sandbox for --sandbox."""
    from uploader.api import check_base_url

    if use_sandbox:
        from uploader.sandbox import Sandbox

        box = stack.enter_context(Sandbox())
        click.echo(f"sandbox: API emulator at {box.base_url}", err=True)
        return box.base_url, box.api_key
    if not api_key:
        raise UsageError("no API key: set PLAYMENT_API_KEY or pass --api-key (or try --sandbox)")
    return check_base_url(base_url, allow_http), api_key


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@click.option("--batch-name", help="Create this batch once (id kept in the ledger) and put the jobs in it.")
@click.option("--default-batch", is_flag=True,
              help="Put rows without a batch in the project's default batch, not in the batch the ledger "
                   "creates for them (then a job whose answer was lost can be found only once another job "
                   "of the run has succeeded).")
@ledger_option
@_api_options
@click.option("--concurrency", type=click.IntRange(1, 1024), default=64, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0.001, max=1_000_000), metavar="R",
              help="At most R requests in any one-second window (R below 1: one request every 1/R s; above 1, "
                   "whole requests: 2.5 sends at most 2 a second).")
@click.option("--max-retry-after", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="The longest wait a Retry-After from the API may impose; a longer one is "
                                      "cut to this (and you are told).")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=8, show_default=True)
@click.option("--lease-seconds", type=click.FloatRange(min=1), default=120.0, show_default=True, metavar="S",
              help="How long a claimed row stays reserved to this run without a heartbeat (renewed every S/4 s); "
                   "after that, runs sharing the ledger take it over. Shorter: faster takeover of a dead "
                   "machine's rows, but a run stalled for longer than S loses its rows (its late answers are "
                   "ignored, never recorded).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar; a status line every few seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON.")
@click.option("--preflight", is_flag=True,
              help="Before sending, check every pending row's attachment URLs (as `uploader check` does) and block "
                   "the rows whose image or frames would not open.")
@click.option("--allow-blocked", is_flag=True,
              help="Send blocked rows too (released to pending first); with --preflight, bad attachments are "
                   "reported but not blocked.")
@preflight_options
@url_ttl_option
@_handle_errors
def run(
    manifest: Path | None, project_id: str | None, work_flow_id: str | None, batch_id: str | None,
    fmt: str | None, columns: tuple[str, ...], sign: bool, batch_name: str | None, default_batch: bool,
    ledger: str | None, api_key: str | None, base_url: str, allow_http: bool, use_sandbox: bool, timeout: float,
    concurrency: int, rate: float | None, max_retry_after: float, max_attempts: int, lease_seconds: float, quiet: bool,
    as_json: bool, preflight: bool, allow_blocked: bool, check_concurrency: int, per_host_rate: float,
    check_timeout: float, recheck_after: dt.timedelta | None, min_url_validity: dt.timedelta, url_ttl: dt.timedelta,
) -> None:
    """Load MANIFEST (if given; - for stdin) and send every pending job; rerun the same command to resume."""
    from uploader.cli.forgetting import project_hint
    from uploader.cli.hints import repeat_from_context
    from uploader.cli.stdin import spooled_manifest
    from uploader.errors import FatalApiError
    from uploader.ledger import new_ledger_file
    from uploader.send import RunOptions, run_upload

    options = _build_options(project_id, work_flow_id, batch_id, fmt, columns, sign)
    signer = _signer(sign, url_ttl)
    run_options = RunOptions(concurrency=concurrency, rate=rate, max_attempts=max_attempts, timeout=timeout,
                             lease_seconds=lease_seconds, max_retry_after=max_retry_after, prepare_payload=signer)
    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack)
        manifest, manifest_label = stack.enter_context(spooled_manifest(manifest, fmt))
        created = new_ledger_file(ledger) if manifest else None
        led = _open_ledger(ledger, create=bool(manifest))
        display = stack.enter_context(ProgressDisplay(quiet or as_json))
        steps: list[Callable[[Ledger], Awaitable[None]]] = []
        if signer is not None:
            steps.append(_signing_step(signer))
        if allow_blocked:
            from uploader.ledger import release_blocked

            released = release_blocked(led.engine)
            if released:
                click.echo(f"--allow-blocked: {released} blocked rows are pending again", err=True)
        if preflight:
            settings = preflight_settings(check_concurrency, per_host_rate, check_timeout, recheck_after,
                                          min_url_validity, block=not allow_blocked,
                                          sign_url=signer.sign_url if signer else None)
            steps.append(_preflight_step(settings, as_json, not allow_blocked))

        async def before_send(led: Ledger) -> None:
            for step in steps:
                await step(led)

        try:
            summary = run_upload(
                led, manifest, options, base_url=url, api_key=key, run_options=run_options,
                batch_name=batch_name, on_load=None if as_json else print_load, on_progress=display.update,
                default_batch=default_batch, on_notice=lambda message: click.echo(message, err=True),
                manifest_label=manifest_label, before_send=before_send if steps else None,
            )
        except FatalApiError as exc:
            display.close()
            partial = getattr(exc, "summary", None)  # the run's summary, when the fatal error carries one
            if partial is not None and as_json:
                print_summary(partial, as_json=True)
            hint = project_hint(exc, led, repeat_from_context())
            if hint is not None:
                raise FatalApiError(f"{exc}\n{hint}", exc.code, exc.http_status, exc.project_id) from None
            raise
        except UploaderError:
            _discard_if_new(led, created)
            raise
        display.close()
    print_summary(summary, as_json, repeat_from_context())
    if summary.interrupted:
        click.echo("interrupted: everything recorded is in the ledger; run the same command again to resume.",
                   err=True)
        sys.exit(130)
    counts = summary.counts
    if (counts["failed"] or counts["uncertain"] or counts["conflict"] or counts["pending"] or counts["in_flight"]
            or counts.get("blocked")):
        sys.exit(EXIT_SOME_FAILED)


def _signer(sign: bool, url_ttl: dt.timedelta) -> PayloadSigner | None:
    """The signer of --sign (storage URLs signed just before each send), or None."""
    if not sign:
        return None
    from uploader.storage import PayloadSigner

    return PayloadSigner(url_ttl)


def _signing_step(signer: PayloadSigner) -> Callable[[Ledger], Awaitable[None]]:
    """A step of the run's `before_send`, after the load: `signer` ready for the pending rows' providers."""

    async def step(led: Ledger) -> None:
        ready_for_pending(led, signer)

    return step


def _preflight_step(settings: PreflightOptions, as_json: bool, blocking: bool
                    ) -> Callable[[Ledger], Awaitable[None]]:
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
@click.argument("manifest", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_manifest_options
@ledger_option
@preflight_options
@url_ttl_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_handle_errors
def check(
    manifest: Path | None, project_id: str | None, work_flow_id: str | None, batch_id: str | None,
    fmt: str | None, columns: tuple[str, ...], sign: bool, ledger: str | None, check_concurrency: int,
    per_host_rate: float, check_timeout: float, recheck_after: dt.timedelta | None, min_url_validity: dt.timedelta,
    url_ttl: dt.timedelta, as_json: bool,
) -> None:
    """Load MANIFEST (if given) and check that every pending row's attachments open; block the rows whose
    image or frames would not (exit 3 when any is blocked). Sends no job."""
    import asyncio

    from uploader.cli.hints import repeat_from_context
    from uploader.cli.stdin import spooled_manifest
    from uploader.ledger import new_ledger_file
    from uploader.load import load as load_manifest
    from uploader.send import check_attachments

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
    signer = _signer(sign, url_ttl)
    if signer is not None:
        ready_for_pending(led, signer)
    settings = preflight_settings(check_concurrency, per_host_rate, check_timeout, recheck_after, min_url_validity,
                                  sign_url=signer.sign_url if signer else None)
    result = asyncio.run(check_attachments(led, settings))
    if as_json:
        print_preflight(result, True)
    else:
        print_preflight(result, False, repeat_from_context())
    if result.bad_rows:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@_api_options
@click.option("--max-retry-after", type=click.FloatRange(min=0), default=300.0, show_default=True,
              metavar="SECONDS", help="The longest wait a Retry-After from the API may impose.")
@_handle_errors
def reconcile(
    ledger: str | None, api_key: str | None, base_url: str, allow_http: bool, use_sandbox: bool, timeout: float,
    max_retry_after: float,
) -> None:
    """Look up the job_ids of `uncertain` rows (jobs that exist at the API) by listing their batches."""
    from uploader.send import reconcile as do_reconcile

    with ExitStack() as stack:
        url, key = _endpoint(api_key, base_url, allow_http, use_sandbox, stack)
        led = _open_ledger(ledger, create=False)
        resolved, remaining = do_reconcile(led, base_url=url, api_key=key, timeout=timeout,
                                           max_retry_after=max_retry_after)
    click.echo(f"{resolved} uncertain rows resolved, {remaining} still uncertain.")
    conflicts = led.counts()["conflict"]
    if conflicts:
        from uploader.cli.hints import repeat_from_context
        from uploader.cli.output import conflict_hint

        click.echo(conflict_hint(conflicts, repeat_from_context()))
    if remaining or conflicts:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@ledger_option
@click.option("--project-id", help="Only rows of this project.")
@click.option("--status", "statuses", multiple=True, help="Only rows in this state (repeatable).")
@click.option("--reference-id-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Only these reference_ids: a text file, one a line.")
@click.option("--manifest", help="Only rows loaded from this manifest (the path it was loaded as; - for stdin).")
@click.option("--include-created", is_flag=True,
              help="Also forget rows whose job exists (or may) at the API: their job_ids are lost, and loading "
                   "them again sends them again. Asks first.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed with --include-created without a terminal).")
@_handle_errors
def forget(  # type: ignore[no-untyped-def]
    ledger, project_id, statuses, reference_id_file, manifest, include_created, yes,
) -> None:
    """Remove rows from the ledger (at least one filter); rows whose job exists are kept unless --include-created."""
    from uploader.cli.forgetting import confirm_forget, forget_selection, print_forgotten
    from uploader.ledger import count_forget, forget_rows

    selection = forget_selection(project_id, statuses, reference_id_file, manifest)
    led = _open_ledger(ledger, create=False)
    if include_created:
        confirm_forget(count_forget(led.engine, selection), yes)
    print_forgotten(forget_rows(led.engine, selection, include_created=include_created),
                    None if include_created else count_forget(led.engine, selection))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--api-key", default="sandbox-key", show_default=True, help="The key the sandbox accepts.")
@click.option("--latency-ms", type=float, default=0.0, help="Fixed latency of each job request.")
@click.option("--jitter-ms", type=float, default=0.0, help="Random extra latency, uniform in [0, J].")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 500 FS_0000.")
@click.option("--html-error-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered 502 HTML.")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Fraction whose connection is dropped after the job was created.")
@click.option("--rate-limit", type=click.FloatRange(min=0.1), help="Requests/s; excess answered 429.")
@click.option("--slow-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction answered after --slow-ms.")
@click.option("--slow-ms", type=float, default=0.0)
@click.option("--legacy", is_flag=True, help="Errors as HTTP 200 + success:false; 401 with an empty body.")
@click.option("--retry-after", "retry_after_s", type=click.IntRange(min=1), default=1, show_default=True,
              help="Retry-After seconds sent with a 429.")
@click.option("--seed", type=int, help="Seed for repeatable faults.")
@click.option("--state-file", type=click.Path(dir_okay=False, path_type=Path), help="Persist state here.")
@click.option("--project", "projects", multiple=True,
              help="Serve only these projects (repeatable); others get resource_error. Default: any project.")
@click.option("--forbidden-project", "forbidden", multiple=True,
              help="A project the key may not use: answered `unauthorized` (repeatable).")
@click.option("--page-size", type=click.IntRange(min=1), default=100, show_default=True,
              help="Jobs per page when listing a batch.")
@_handle_errors
def sandbox(host: str, port: int, api_key: str, latency_ms: float, jitter_ms: float, error_rate: float,
            html_error_rate: float, drop_rate: float, rate_limit: float | None, slow_rate: float, slow_ms: float,
            legacy: bool, retry_after_s: int, seed: int | None, state_file: Path | None, projects: tuple[str, ...],
            forbidden: tuple[str, ...], page_size: int) -> None:
    """Serve a local emulator of the GT Studio job API (with fault injection) until Ctrl-C."""
    from uploader.sandbox import SandboxConfig, serve

    try:
        config = SandboxConfig(
            api_key=api_key, latency_ms=latency_ms, jitter_ms=jitter_ms, error_rate=error_rate,
            html_error_rate=html_error_rate, drop_rate=drop_rate, rate_limit=rate_limit, slow_rate=slow_rate,
            slow_ms=slow_ms, legacy=legacy, retry_after_s=retry_after_s, seed=seed, state_file=state_file,
            projects=frozenset(projects) if projects else None, forbidden_projects=frozenset(forbidden),
            page_size=page_size,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    def ready(url: str) -> None:
        click.echo(f"sandbox serving the GT Studio job API at {url}")
        click.echo(f"API key: {api_key}")
        click.echo(f"try: uploader run sample_manifests/images.csv --project-id demo --work-flow-id wf "
                   f"--base-url {url} --api-key {api_key}")
        click.echo("Ctrl-C to stop.")

    try:
        serve(config, host=host, port=port, on_ready=ready)
    except OSError as exc:
        raise UploaderError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def main() -> None:
    cli(prog_name="uploader")


def _register_late_commands() -> None:
    """Commands defined in their own modules (they use this module's helpers, so they come after it)."""
    from uploader.cli.planning import plan_command

    cli.add_command(plan_command)


_register_late_commands()
