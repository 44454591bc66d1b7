"""The library entry points of sending that the CLI calls: run an upload, reconcile uncertain rows.

Usable from Python:

    from uploader import Ledger, ManifestOptions, RunOptions, run_upload
    ledger = Ledger.open("uploader.db")
    summary = run_upload(ledger, "images.csv", ManifestOptions(project_id="p", work_flow_id="w"),
                         base_url="https://api.playment.io", api_key=key)

`run_upload_async` is the same run for code already inside an event loop (`await run_upload_async(...)`).
"""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from uploader.errors import InterruptedRun, UsageError
from uploader.load import load

if TYPE_CHECKING:  # the HTTP stack loads only when a command sends requests
    from uploader.api import ApiClient
    from uploader.ledger import Ledger
    from uploader.load import LoadReport
    from uploader.manifest import ManifestOptions
    from uploader.send.batches import BatchPolicy
    from uploader.send.submit import Progress, RunOptions, RunSummary, StopFlag

__all__ = ["reconcile", "run_upload", "run_upload_async"]

T = TypeVar("T")
P = ParamSpec("P")


async def run_upload_async(
    ledger: Ledger,
    manifest: str | Path | None,
    options: ManifestOptions,
    *,
    base_url: str,
    api_key: str,
    run_options: RunOptions | None = None,
    batch_name: str | None = None,
    on_load: Callable[[LoadReport], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop: StopFlag | None = None,
    handle_signals: bool = True,
    default_batch: bool = False,
    on_notice: Callable[[str], None] | None = None,
    manifest_label: str | None = None,
    before_send: Callable[[Ledger], Awaitable[object]] | None = None,
) -> RunSummary:
    """Load `manifest` (if given; named `manifest_label` in the ledger if given), then send every pending row of
    the ledger; `before_send(ledger)` is awaited between the two (e.g. `preflight`). Rows with no batch of their
    own go into the ledger's own batch for their project, created before the first job and reused on every
    rerun (so every job's batch id is known and an FS_0001 can always be resolved); `default_batch` sends
    them to the project's default batch instead. `on_notice` gets one-line messages (a wait, a new name).
    `run_upload` runs it in an event loop of its own (uploader.api.run_loop); this coroutine runs in the caller's."""
    from uploader.send.submit import RunOptions, StopFlag

    stop = stop or StopFlag()
    body = _run(
        ledger,
        manifest,
        options,
        base_url,
        api_key,
        run_options or RunOptions(),
        batch_name,
        on_load,
        on_progress,
        stop,
        default_batch,
        on_notice,
        manifest_label,
        before_send,
    )
    return await _with_signals(stop, handle_signals, body)


def _blocking(coroutine_function: Callable[P, Coroutine[Any, Any, T]], name: str) -> Callable[P, T]:
    """A function running `coroutine_function` to completion in a new event loop: one signature, the
    coroutine's, for both the blocking and the async entry point."""

    @functools.wraps(coroutine_function)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        from uploader.api import run_loop

        return run_loop(coroutine_function(*args, **kwargs))

    run.__name__, run.__qualname__ = name, name
    return run


#: `run_upload_async` in an event loop of its own: for code not already inside one (the CLI, scripts).
run_upload = _blocking(run_upload_async, "run_upload")


async def _with_signals(stop: StopFlag, handle_signals: bool, body: Awaitable[T]) -> T:
    """Await `body` under one stop for the whole run: the first SIGINT/SIGTERM ends every wait of the batch
    creation too (it comes before the first job), not only those of the submit loop (uploader.send.batches,
    uploader.send.submit). The previous handlers are restored afterwards."""
    from uploader.send.submit import _install_signal_handlers

    stop._loop = asyncio.get_running_loop()
    previous = _install_signal_handlers(stop) if handle_signals else {}
    try:
        return await body
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _run(
    ledger: Ledger,
    manifest: str | Path | None,
    options: ManifestOptions,
    base_url: str,
    api_key: str,
    run_options: RunOptions,
    batch_name: str | None,
    on_load: Callable[[LoadReport], None] | None,
    on_progress: Callable[[Progress], None] | None,
    stop: StopFlag,
    default_batch: bool,
    on_notice: Callable[[str], None] | None,
    manifest_label: str | None = None,
    before_send: Callable[[Ledger], Awaitable[object]] | None = None,
) -> RunSummary:
    """Load, give unbatched rows a batch, then submit; `stop` is the run's one StopFlag (`_with_signals`)."""
    from uploader.send.batches import BatchPolicy
    from uploader.send.submit import nothing_to_send, submit

    async with AsyncExitStack() as stack:
        client: ApiClient | None = None

        async def get_client() -> ApiClient:
            """The HTTP client, opened only when a request is really needed (a finished rerun sends none)."""
            nonlocal client
            if client is None:
                from uploader.api import ApiClient  # aiohttp and httpx: imported only when a request is needed

                client = await stack.enter_async_context(
                    ApiClient(base_url, api_key, concurrency=run_options.concurrency, timeout=run_options.timeout)
                )
            return client

        if default_batch and (batch_name or options.batch_id):
            raise UsageError("--default-batch cannot go with --batch-id or --batch-name")
        policy = BatchPolicy(
            max_attempts=run_options.max_attempts,
            timeout=run_options.timeout,
            seed=run_options.seed,
            outage_seconds=run_options.outage_seconds,
            max_retry_after=run_options.max_retry_after,
        )
        if batch_name and manifest is not None and ledger.batch_id_for(options.project_id or "", batch_name) is None:
            _check_before_creating(ledger, manifest, options, manifest_label)
        if batch_name:
            options = await _batch_step(
                stop, _with_named_batch(ledger, get_client, options, batch_name, policy, on_notice, stop)
            )
            if stop.gentle:  # stopped while its creation was in the air: the batch is recorded, nothing loaded
                raise InterruptedRun()
        if manifest is not None:
            report = load(ledger, manifest, options, manifest_label)
            if on_load:
                on_load(report)
        if before_send is not None:
            await before_send(ledger)
        counts = ledger.counts()
        if not (counts["pending"] or counts["in_flight"] or counts["uncertain"]):
            return nothing_to_send(ledger, counts)
        if counts["pending"]:
            await _batch_step(
                stop,
                _batch_unbatched_rows(ledger, get_client, options, batch_name, default_batch, policy, on_notice, stop),
            )
        _tell_clock_skew(ledger, run_options.lease_seconds, on_notice)
        return await submit(
            ledger,
            await get_client(),
            run_options,
            on_progress=on_progress,
            stop=stop,
            handle_signals=False,
        )


#: A difference of clocks between this machine and the ledger's database server worth telling (seconds).
CLOCK_SKEW_TOLD = 2.0


def clock_skew_notice(skew: float | None, lease_seconds: float) -> str | None:
    """What to tell of the database server's clock being `skew` seconds ahead of this machine's (None: nothing).
    Each machine stamps and judges leases by its own clock; a skew near the lease makes another machine's run
    take this run's rows over while their requests are in the air. Nothing is created twice (the API refuses a
    second job with FS_0001, the run finds the first, and the lease fence drops the late answer), but requests
    and lookups are spent for nothing."""
    if skew is None or abs(skew) < CLOCK_SKEW_TOLD:
        return None
    side = "behind" if skew > 0 else "ahead of"
    text = f"this machine's clock is {abs(skew):.0f} s {side} the ledger database's"
    if abs(skew) < lease_seconds / 4:
        return f"{text}; runs on other machines judge this run's leases by their own clocks: keep clocks in sync (NTP)"
    return (
        f"warning: {text}, a large part of the {lease_seconds:.0f} s lease: runs on other machines may take this run's "
        "rows over while they are in the air (no job is created twice, but requests are spent again); sync the clocks "
        "(NTP) or raise --lease-seconds"
    )


def _tell_clock_skew(ledger: Ledger, lease_seconds: float, on_notice: Callable[[str], None] | None) -> None:
    if on_notice is None:
        return  # nobody to tell: not even measured
    notice = clock_skew_notice(ledger.clock_skew(), lease_seconds)
    if notice is not None:
        on_notice(notice)


async def _batch_step(stop: StopFlag, step: Awaitable[T]) -> T:
    """Await a batch step of the run. Its waits end on the first signal (InterruptedRun, from
    uploader.send.batches); a second signal also cancels its request in the air. Either way: InterruptedRun."""
    task = asyncio.current_task()
    assert task is not None
    stop._waiters.append(task)  # StopFlag cancels its waiters on a hard stop
    try:
        return await step
    except asyncio.CancelledError:
        if not stop.hard:
            raise
        task.uncancel()
        raise InterruptedRun() from None
    finally:
        stop._waiters.remove(task)


def _check_before_creating(ledger: Ledger, manifest: str | Path, options: ManifestOptions, label: str | None) -> None:
    """Read the whole manifest as its load will (ManifestError for a bad one, nothing written) before a new
    named batch is created at the API: a bad manifest then leaves no batch there, nor a ledger file."""
    from uploader.load import plan_manifest
    from uploader.manifest import Manifest

    plan_manifest(ledger, Manifest(Path(manifest), options, label))


async def _with_named_batch(
    ledger: Ledger,
    get_client: Callable[[], Awaitable[ApiClient]],
    options: ManifestOptions,
    name: str,
    policy: BatchPolicy,
    on_notice: Callable[[str], None] | None = None,
    stop: StopFlag | None = None,
) -> ManifestOptions:
    """Create the batch once, store its id before any job is sent, reuse it on every rerun (uploader.send.batches:
    of runs starting together one creates it, the others wait for its id)."""
    from uploader.send.batches import ensure_batch

    if not options.project_id:
        raise UsageError("--batch-name needs --project-id")
    if options.batch_id:
        raise UsageError("give either --batch-id or --batch-name, not both")
    batch_id = await ensure_batch(ledger, get_client, options.project_id, name, policy, notice=on_notice, stop=stop)
    from dataclasses import replace

    return replace(options, batch_id=batch_id)


async def _batch_unbatched_rows(
    ledger: Ledger,
    get_client: Callable[[], Awaitable[ApiClient]],
    options: ManifestOptions,
    batch_name: str | None,
    default_batch: bool,
    policy: BatchPolicy,
    on_notice: Callable[[str], None] | None,
    stop: StopFlag | None = None,
) -> None:
    """Give rows with no batch of their own that were never sent (e.g. loaded by `uploader load`) a batch
    before the first job: the run's --batch-id / --batch-name for its project; in every other project the
    batch named `batch_name` of that project (a batch belongs to one project), else (unless `default_batch`)
    the ledger's own batch of each project, created once and reused."""
    from uploader.send.batches import ensure_batch

    if options.batch_id and options.project_id:
        ledger.assign_batch(options.project_id, options.batch_id)
    if default_batch:
        return
    projects = ledger.projects_needing_batch()
    manifest_name = ledger.last_manifest_name() if projects else None
    for project in projects:
        batch_id = await ensure_batch(
            ledger, get_client, project, batch_name, policy, manifest_name=manifest_name, notice=on_notice, stop=stop
        )
        ledger.assign_batch(project, batch_id)


def reconcile(
    ledger: Ledger,
    *,
    base_url: str,
    api_key: str,
    timeout: float = 30.0,
    max_retry_after: float | None = None,
    seed: int | None = None,
) -> tuple[int, int]:
    """Resolve `uncertain` rows by listing their batches, with the resolver a run uses (uploader.send.resolve:
    the same retries, 429 included, and the same settling); returns (resolved, still uncertain).
    `max_retry_after`: the longest wait a Retry-After may impose (default policy.MAX_RETRY_AFTER). Raises
    FatalApiError when the API refuses the key or project, ApiUnreachableError when a batch could not be
    read (after the rows that could be were resolved)."""
    from uploader.api import run_loop

    return run_loop(_reconcile(ledger, base_url, api_key, timeout, max_retry_after, seed))


async def _reconcile(
    ledger: Ledger, base_url: str, api_key: str, timeout: float, max_retry_after: float | None, seed: int | None
) -> tuple[int, int]:
    """One final round of the run's resolver over every uncertain row of the ledger."""
    import random

    from uploader.api import MAX_RETRY_AFTER, ApiClient
    from uploader.errors import ApiUnreachableError
    from uploader.send.resolve import Resolver
    from uploader.send.submit import RunOptions
    from uploader.send.summary import Progress

    progress = Progress()
    async with ApiClient(base_url, api_key, concurrency=1, timeout=timeout) as client:  # one lookup at a time
        resolver = Resolver(
            ledger,
            client,
            progress,
            random.Random(seed),
            max_retry_after=MAX_RETRY_AFTER if max_retry_after is None else max_retry_after,
            max_attempts=RunOptions.max_attempts,  # a run's default: the next run sends what it makes pending
        )
        resolver.waiting = True
        fatal = await resolver.resolve(final=True)
    if fatal is not None:
        raise fatal
    resolved = progress.succeeded + progress.conflict + progress.failed + progress.requeued
    remaining = ledger.counts()["uncertain"]
    if resolver.unreachable is not None and remaining:
        raise ApiUnreachableError(
            f"{resolver.unreachable} ({resolved} uncertain rows resolved, {remaining} still "
            "uncertain: run `uploader reconcile` again later)"
        )
    return resolved, remaining
