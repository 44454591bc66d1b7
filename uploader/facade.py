"""`upload`: one call from Python or a notebook, a pandas DataFrame, a pyarrow Table or a manifest file in,
the run's summary out.

    import uploader
    summary = uploader.upload(df, project_id="p", work_flow_id="w", ledger="jobs.db", api_key=key)
    jobs = uploader.Ledger.open("jobs.db").to_pandas()      # reference_id → job_id, status, errors

A DataFrame or Table is written to a temporary Parquet file and loaded like any manifest: the same
all-or-nothing loader and checks, then the same run (`uploader.send.run_upload_async`) as `uploader run`.
Calling it again resumes: the ledger skips what already succeeded. pandas and pyarrow are imported only
when a DataFrame or Table is given.

`upload` works inside a running event loop too (Jupyter): there it runs the upload in a helper thread with
a loop of its own, and a keyboard interrupt (the notebook's stop button) stops the run gently, as Ctrl-C
does `uploader run`. `await upload_async(...)` runs it in the caller's loop instead.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, cast

from uploader.api import run_loop
from uploader.errors import ManifestError, Problem, UploaderError, UsageError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from uploader.ledger import Ledger
    from uploader.send import Progress, RunOptions, RunSummary, StopFlag
    from uploader.storage import PayloadSigner

__all__ = ["upload", "upload_async"]

P = ParamSpec("P")

#: The name of the Parquet file a DataFrame or Table is written to (it names the ledger's own batch).
TABLE_FILE = "dataframe.parquet"


async def upload_async(
    manifest: pd.DataFrame | pa.Table | str | os.PathLike[str] | None,
    *,
    project_id: str | None,
    work_flow_id: str | None = None,
    batch_id: str | None = None,
    batch_name: str | None = None,
    default_batch: bool = False,
    columns: Mapping[str, str] | None = None,
    format: str | None = None,
    ledger: str | os.PathLike[str] | Ledger | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    allow_http: bool = False,
    sign: bool = False,
    url_ttl: dt.timedelta | None = None,
    run_options: RunOptions | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    stop: StopFlag | None = None,
    handle_signals: bool = True,
) -> RunSummary:
    """Load `manifest` into the ledger, all or nothing, then send every pending row; returns the run's summary
    (`summary.counts`: rows per status in the whole ledger). The options are those of `uploader run`:

    - `manifest`: a pandas DataFrame (its named index levels become columns), a pyarrow Table, a manifest
      file's path (CSV/TSV, JSONL, Parquet; `format` when its extension does not say), or None to send only
      what the ledger already holds.
    - `project_id`, `work_flow_id`, `batch_id`: for rows without such a column (None: the manifest has it).
      `columns`: API field name → the manifest's column, as `--column API_NAME=COLUMN`.
    - `batch_name`, `default_batch`: as `--batch-name`, `--default-batch`.
    - `ledger`: a path or SQLAlchemy URL (default: UPLOADER_LEDGER, else ./uploader.db), or an open Ledger
      (left open). A ledger file this call created is removed again if the call fails before writing to it.
    - `api_key`, `base_url`: default PLAYMENT_API_KEY and PLAYMENT_BASE_URL (else the real API). Plain http
      only to loopback, unless `allow_http`.
    - `sign`, `url_ttl`: as `--sign`, `--url-ttl` (default 7 days): s3://, gs:// and Azure blob URLs are
      accepted and signed just before each send with your credentials (the [s3], [gcs] or [azure] extra);
      the ledger keeps the storage URL. A missing extra or credential raises a StorageError before any send.
    - `run_options`: concurrency, rate, attempts, timeouts (`uploader.RunOptions`).
    - `stop`: trip it (`stop.trip()`) to stop the run gently, twice to stop it at once. `handle_signals`:
      SIGINT/SIGTERM trip it while the run lasts (only possible in the main thread).

    Raises an UploaderError (uploader.errors) when the upload cannot run: a bad manifest (nothing is loaded),
    a bad key or project, the API unreachable. `upload` runs to the end in an event loop of its own (in a
    helper thread when the caller is inside one); `upload_async` runs in the caller's loop, which it blocks
    while it loads the manifest and writes the ledger (`await asyncio.to_thread(upload, ...)` does not).
    """
    from uploader.manifest import ManifestOptions
    from uploader.send import ready_for_pending, run_upload_async

    url, key = _endpoint(api_key, base_url, allow_http)
    options = ManifestOptions(
        project_id=project_id,
        work_flow_id=work_flow_id,
        batch_id=batch_id,
        format=format,
        columns=tuple((columns or {}).items()),
        sign=sign,
    )
    signer = _signer(sign, url_ttl, run_options)

    async def before_send(led: Ledger) -> None:
        ready_for_pending(led, signer, "sign=True")

    if signer is not None:
        from uploader.send import RunOptions

        run_options = replace(run_options or RunOptions(), prepare_payload=signer)
    with _manifest_file(manifest, format) as path, _open_ledger(ledger, create=path is not None) as led:
        return await run_upload_async(
            led,
            path,
            options,
            base_url=url,
            api_key=key,
            run_options=run_options,
            before_send=before_send,
            batch_name=batch_name,
            on_progress=on_progress,
            stop=stop,
            handle_signals=handle_signals,
            default_batch=default_batch,
            on_notice=on_notice,
        )


def _signer(sign: bool, url_ttl: dt.timedelta | None, run_options: RunOptions | None) -> PayloadSigner | None:
    """The signer of `sign=True` (storage URLs signed just before each send), or None."""
    if not sign:
        return None
    if run_options is not None and run_options.prepare_payload is not None:
        raise UsageError("sign=True signs the payloads itself: it cannot go with run_options.prepare_payload")
    from uploader.storage import DEFAULT_TTL, PayloadSigner

    return PayloadSigner(url_ttl if url_ttl is not None else DEFAULT_TTL)


def _endpoint(api_key: str | None, base_url: str | None, allow_http: bool) -> tuple[str, str]:
    """The checked base URL and the key, from the arguments or the environment (as `uploader run`)."""
    from uploader.api import DEFAULT_BASE_URL, check_base_url

    key = api_key or os.environ.get("PLAYMENT_API_KEY")
    if not key:
        raise UsageError("no API key: pass api_key=... or set PLAYMENT_API_KEY")
    return check_base_url(base_url or os.environ.get("PLAYMENT_BASE_URL") or DEFAULT_BASE_URL, allow_http), key


def _arrow_table(manifest: object) -> pa.Table | None:
    """`manifest` as an Arrow table if it is a DataFrame or a Table, else None. Neither library is imported
    for a path: an object can only be a DataFrame (a Table) if pandas (pyarrow) is imported already."""
    pandas, pyarrow = sys.modules.get("pandas"), sys.modules.get("pyarrow")
    if pandas is not None and isinstance(manifest, pandas.DataFrame):
        frame = manifest
        if any(name is not None for name in frame.index.names):
            clash = [name for name in frame.index.names if name is not None and name in frame.columns]
            if clash:
                raise UsageError(
                    f"the DataFrame's index is named {clash[0]!r}, as one of its columns is: rename one, or drop "
                    "the index (df.reset_index(drop=True))"
                )
            frame = frame.reset_index()
        return _from_pandas(frame)
    if pyarrow is not None and isinstance(manifest, pyarrow.Table):
        return manifest
    return None


def _from_pandas(frame: pd.DataFrame) -> pa.Table:
    """A DataFrame as an Arrow table, its objects and lists as JSON text: Arrow would give a column of dicts one
    structure for all rows (every row getting every other row's keys, as nulls, and an int where another row
    has a float turned float), so a payload would not be the one given. A column Arrow cannot take (mixed
    types) is a ManifestError naming it."""
    import pyarrow as pa

    frame = frame.copy(deep=False)
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(_is_json_object).any():
            frame[column] = frame[column].map(_as_json_text)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        for column in frame.columns:
            try:
                pa.array(frame[column], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as bad:
                message = f"cannot be read as one type ({bad}); make its values one kind (e.g. all text)"
                raise ManifestError([Problem("DataFrame", None, str(column), message, "row")]) from None
        raise ManifestError([Problem("DataFrame", None, None, f"cannot be read as a table: {exc}", "row")]) from None


def _is_json_object(value: object) -> bool:
    """A dict, or a list holding one (or a list): what Arrow would give one structure across rows. A list of
    plain values keeps its list type."""
    return isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict | list) for v in value))


def _as_json_text(value: object) -> object:
    """A dict or list as the JSON text the manifest reader takes; anything else as it is."""
    if not isinstance(value, dict | list):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return value  # no JSON form (NaN, a datetime inside): the reader says why, with its row


@contextmanager
def _manifest_file(manifest: object, format: str | None) -> Iterator[Path | None]:
    """The manifest as a file: a DataFrame or Table written to a temporary Parquet file (removed after the
    load's run; its problems name the DataFrame or Table, their rows are 0-based positions), a path as it
    is, None as None."""
    table = _arrow_table(manifest)
    if table is not None and format is not None:
        raise UsageError("format is for a manifest file; a DataFrame or Table needs none")
    if table is None:
        if manifest is not None and not isinstance(manifest, str | os.PathLike):
            raise TypeError(
                f"upload() takes a pandas DataFrame, a pyarrow Table, a path or None, not {type(manifest).__name__}"
            )
        yield None if manifest is None else Path(manifest)
        return
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="uploader-") as folder:
        path = Path(folder) / TABLE_FILE
        pq.write_table(table, path)
        try:
            yield path
        except ManifestError as exc:  # name the caller's object, not the temporary file
            label = type(manifest).__name__
            problems = [replace(p, file=label) if p.file == str(path) else p for p in exc.problems]
            raise ManifestError(problems, exc.total) from None


@contextmanager
def _open_ledger(ledger: str | os.PathLike[str] | Ledger | None, *, create: bool) -> Iterator[Ledger]:
    """The ledger for one call: an open Ledger as it is; else opened, closed afterwards, and, if this call
    created its file and failed before writing to it, removed (as `uploader run` does)."""
    from uploader.ledger import Ledger, new_ledger_file

    if isinstance(ledger, Ledger):
        yield ledger
        return
    created = new_ledger_file(ledger) if create else None
    led = Ledger.open(ledger, create=create)
    try:
        yield led
    except UploaderError:
        if created is not None:
            led.discard_if_unused()
        raise
    finally:
        led.close()


def _blocking(coroutine_function: Callable[P, Coroutine[Any, Any, RunSummary]]) -> Callable[P, RunSummary]:
    """`coroutine_function` (upload_async) as a blocking function that works with or without a running event
    loop: without one, a new loop (uploader.api.run_loop); inside one (Jupyter), a helper thread with a loop
    of its own, so the caller gets the summary rather than "asyncio.run() cannot be called from a running event
    loop"."""

    @functools.wraps(coroutine_function)
    def run(*args: P.args, **kwargs: P.kwargs) -> RunSummary:
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False  # no loop: run outside this handler, so an error is not chained to this one
        if not in_loop:
            return run_loop(coroutine_function(*args, **kwargs))
        from uploader.send import StopFlag

        options = cast(dict[str, Any], kwargs)
        stop = options["stop"] = options.get("stop") or StopFlag()
        return _in_helper_thread(lambda: coroutine_function(*args, **kwargs), stop)

    run.__name__ = run.__qualname__ = "upload"
    return run


def _in_helper_thread(make: Callable[[], Coroutine[Any, Any, RunSummary]], stop: StopFlag) -> RunSummary:
    """Run the coroutine `make()` returns in a new thread with its own event loop, and wait for it. Signal
    handlers can be set only in the main thread, so a KeyboardInterrupt there trips `stop` instead: the
    first stops the run gently, the second at once; either way the run ends with its summary."""
    outcome: list[tuple[bool, Any]] = []
    done = threading.Event()

    def main() -> None:
        try:
            outcome.append((True, run_loop(make())))
        except BaseException as exc:  # handed to the caller's thread  # noqa: BLE001
            outcome.append((False, exc))
        finally:
            done.set()

    thread = threading.Thread(target=main, name="uploader-upload")
    thread.start()
    _wait_tripping(done, stop)
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return cast("RunSummary", value)


#: How often the caller's thread wakes while it waits for the run: a SIGINT the kernel hands to another thread
#: (it may, when the main thread already has a signal pending) reaches Python only when the main thread runs.
_WAKE_EVERY = 0.2


def _wait_tripping(done: threading.Event, stop: StopFlag) -> None:
    """Wait for `done`, turning each KeyboardInterrupt into `stop.trip()`. An Event, not join(): on Python
    3.11 an interrupted join() marks a running thread stopped. With a timeout: see _WAKE_EVERY."""
    while True:
        try:
            while not done.wait(_WAKE_EVERY):
                pass
            return
        except KeyboardInterrupt:
            stop.trip()


#: `upload_async` for code that is not a coroutine: a script, or a notebook cell (inside a running loop).
upload = _blocking(upload_async)
