"""How command results are shown to a person: load reports, run summaries, status, progress.

It exists so that uploader.cli.commands keeps only the click commands, their options and the mapping of errors to
exit codes; everything here turns a library result into lines on stdout/stderr (or JSON). Like the CLI,
it imports nothing heavy at module level: tqdm is imported only when a progress bar is first drawn.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from tqdm import tqdm

    from uploader.cli.settings import Resolved
    from uploader.ledger import StatusReport
    from uploader.load import LoadReport
    from uploader.send import Progress, RunSummary, SignedUrls, SyncReport

from uploader.cli.hints import NO_REPEAT, Repeat

__all__ = [
    "CONFLICT_HINT",
    "ProgressDisplay",
    "SyncDisplay",
    "conflict_hint",
    "error_line",
    "error_lines",
    "not_found_text",
    "plural",
    "print_load",
    "print_resume",
    "print_row",
    "print_settings",
    "print_status",
    "print_summary",
    "retry_report",
    "rows_are",
    "short_message",
    "uncertain_reasons",
]

#: What a person is told about rows in state `conflict` (status and the run summary).
CONFLICT_HINT = (
    "{rows_are} in conflict: their job exists at the API but may hold other data than the manifest says "
    "(created_elsewhere: the reference_id was used before this ledger sent it; payload_changed: an earlier "
    "send of another payload may have created it; duplicate_job_id: the API gave its job_id to another row "
    "too). They are never sent again; check them with `{export}`."
)


def conflict_hint(n: int, repeat: Repeat = NO_REPEAT) -> str:
    """CONFLICT_HINT for `n` rows, its export command repeating the current --ledger."""
    return CONFLICT_HINT.format(rows_are=rows_are(n), export=repeat.command("export --status conflict"))


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 row`, `2 rows`, `0 rows` (with `nouns` for an irregular plural)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def rows_are(n: int) -> str:
    """`1 row is`, `2 rows are`: the subject of a sentence about rows."""
    return f"{plural(n, 'row')} {'is' if n == 1 else 'are'}"


def print_load(
    report: LoadReport,
    as_json: bool = False,
    quiet: bool = False,
    counts: dict[str, int] | None = None,
    signed: SignedUrls | None = None,
) -> None:
    """What loading a manifest did: new, unchanged, updated and conflicting rows; with `signed`, how many of
    the pending rows' signed URLs expire too soon, and the earliest expiry. With the ledger's `counts`
    (`uploader run`, which sends next), a manifest already loaded is reported as what the run resumes."""
    from uploader.cli.preflight import signed_dict, signed_line

    if as_json:
        import dataclasses

        document = dataclasses.asdict(report)
        del document["signed_possible"]  # a hint for the caller, not part of the report
        if signed is not None:
            document["signed_urls"] = signed_dict(signed)
        click.echo(json.dumps(document, indent=2, default=str))
        return
    if quiet:
        click.echo(
            f"{report.manifest}: {plural(report.rows, 'row')}: {report.new} new, {report.updated} updated, "
            f"{report.conflicts} conflicting"
        )
        return
    if report.already_loaded and counts is not None:
        print_resume(report.manifest, counts)
    elif report.already_loaded:
        click.echo(
            f"{report.manifest}: already loaded with the same options ({plural(report.rows, 'row')}); nothing to do."
        )
    else:
        click.echo(
            f"{report.manifest}: {plural(report.rows, 'row')}: {report.new} new, {report.unchanged} unchanged, "
            f"{report.updated} updated, {report.conflicts} conflicting ({report.seconds:.2f} s)"
        )
    line = signed_line(signed) if signed is not None else None
    if line is not None:
        click.echo(line)
    if report.updated:
        click.echo(f"  updated (payload changed, will be sent): {', '.join(report.updated_examples)}")
    if report.conflicts:
        click.echo(
            f"  conflicts: {plural(report.conflicts, 'row')} already sent with a different payload were left unchanged "
            f"(not sent again), e.g. {', '.join(report.conflict_examples)}",
            err=True,
        )


def print_resume(source: Any, counts: dict[str, int], loaded: bool = True) -> None:
    """How much is done and how much the run sends now: over a manifest already loaded (`source`), or, not
    `loaded`, over the ledger `source` alone (`uploader run` with no manifest)."""
    done = counts["succeeded"] + counts["failed"] + counts["conflict"]
    to_send = counts["pending"] + counts["in_flight"]
    head = f"{source}: already loaded" if loaded else f"ledger {source}"
    if to_send or counts["uncertain"]:
        looked_up = f", {counts['uncertain']:,} to look up" if counts["uncertain"] else ""
        click.echo(f"{head}; resuming: {done:,} done, {to_send:,} to send{looked_up}")
    else:
        click.echo(f"{head}; every row is done ({done:,}); nothing to send.")


def print_status(
    report: StatusReport,
    as_json: bool,
    repeat: Repeat = NO_REPEAT,
    projects: dict[str, dict[str, int]] | None = None,
    attachments: dict[str, Any] | None = None,
    quiet: bool = False,
    platform: dict[str, Any] | None = None,
) -> None:
    """The ledger's state counts (and per project, when `projects` holds more than one), error codes and
    live workers, with a hint for what to do next (follow-up commands repeat `repeat`'s options); with
    `quiet`, the counts in one line. `platform`: what `uploader sync` recorded (`sync_counts`)."""
    by_project = projects if projects and len(projects) > 1 else None
    if as_json:
        data = report.as_dict()
        if by_project:
            data["projects"] = by_project
        if attachments is not None:
            data["attachments"] = attachments
        if platform is not None:
            data["platform"] = platform
        click.echo(json.dumps(data, indent=2))
        return
    if quiet:
        click.echo(f"{report.total} jobs: " + ", ".join(f"{n} {name}" for name, n in report.counts.items() if n))
        return
    _print_counts(report, by_project)
    if platform and any(s != "None" for s in platform["by_status"]):  # some row was synced
        words = ", ".join(f"{n} {s}" for s, n in sorted(platform["by_status"].items()) if s != "None")
        click.echo(
            f"on the platform (last `uploader sync`): {words}; {platform['results']} results fetched"
            + (f", {platform['result_errors']} not fetched" if platform["result_errors"] else "")
        )
    _print_activity(report)
    _print_follow_ups(report, repeat, attachments)


def _print_counts(report: StatusReport, by_project: dict[str, dict[str, int]] | None) -> None:
    """`status`: the state counts, per project too, and the error codes."""
    click.echo(f"{report.total} jobs")
    for name, n in report.counts.items():
        click.echo(f"  {name:<10} {n}")
    if by_project:
        click.echo(f"{len(by_project)} projects:")
        for project, counts in by_project.items():
            shown = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
            click.echo(f"  {project}: {sum(counts.values())} jobs ({shown})")
    for line in error_lines(report.errors):
        click.echo(line)


def _print_activity(report: StatusReport) -> None:
    """`status`: the oldest pending row, the last activity, and the live workers."""
    if report.oldest_pending:
        click.echo(f"oldest pending row loaded at {report.oldest_pending.isoformat()}Z")
    if report.last_activity:
        click.echo(f"last activity {report.last_activity.isoformat()}Z")
    if report.live_workers:
        total = sum(w["requests_per_second"] for w in report.live_workers)
        n = len(report.live_workers)
        click.echo(f"{n} live worker{'s' if n != 1 else ''} ({total:.0f} requests/s together):")
    for w in report.live_workers:
        click.echo(
            f"  {w['hostname']} pid {w['pid']}: {w['sent']} requests since {w['started_at']} "
            f"({w['requests_per_second']:.0f}/s), last heartbeat {w['heartbeat_age_seconds']:.0f} s ago"
        )
    for w in getattr(report, "dead_workers", ()):
        click.echo(
            f"dead worker: {w['hostname']} pid {w['pid']} (the process is gone; it never stopped cleanly): its rows "
            "are taken over by the next run"
        )


def _print_follow_ups(report: StatusReport, repeat: Repeat, attachments: dict[str, Any] | None) -> None:
    """`status`: what to do about uncertain, conflict, blocked and failed rows (and where the jobs came from)."""
    if report.counts.get("uncertain"):
        click.echo(
            f"{rows_are(report.counts['uncertain'])} uncertain: the job exists at the API but its job_id is not "
            "known yet. A run looks them up by itself; if they stay uncertain, run "
            f"`{repeat.command('reconcile', api=True)}`."
        )
    if report.origins:
        click.echo("jobs by origin: " + ", ".join(f"{k} {v}" for k, v in report.origins.items()))
    if report.counts.get("conflict"):
        click.echo(conflict_hint(report.counts["conflict"], repeat))
    if attachments is not None:
        _print_attachments(attachments, report.counts.get("blocked", 0), repeat)
    if report.counts.get("failed"):
        click.echo(
            f"failed rows: fix the cause, then `{repeat.command('retry --error-code CODE')}` or "
            f"`{repeat.command('retry --all')}`."
        )


#: The longest API message quoted beside an error code.
MESSAGE_CHARS = 100


def short_message(message: str | None) -> str:
    """An API message as `status` and the report show it: one line of at most MESSAGE_CHARS (an answer may
    hold 1 MiB)."""
    text = " ".join((message or "").split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def error_line(code: str, rows: int, message: str | None, reference_id: str | None) -> str:
    """One error code as a person reads it: `GE_0001 × 12: invalid parameter: batch_id (e.g. img-00001)`."""
    text = short_message(message)
    return f"{code} × {rows}" + (f": {text}" if text else "") + (f" (e.g. {reference_id})" if reference_id else "")


def error_lines(errors: list[dict[str, Any]], indent: str = "  ") -> list[str]:
    """The ledger's error codes (uploader.ledger's `error_details`) in three groups: errors (failed, uncertain,
    conflict rows), rows waiting to retry, and throttling (the API asked to slow down: not an error)."""
    lines: list[str] = []
    groups = (
        ("error codes (failed, uncertain, conflict):", [e for e in errors if not e["waiting"]]),
        ("waiting to retry:", [e for e in errors if e["waiting"] and not e.get("throttled")]),
        (
            "throttling (the API asked to slow down; not errors, the rows wait and are sent again):",
            [e for e in errors if e["waiting"] and e.get("throttled")],
        ),
    )
    for title, group in groups:
        if group:
            lines.append(title)
            lines += [indent + error_line(e["code"], e["rows"], e["message"], e["reference_id"]) for e in group]
    return lines


def _print_attachments(attachments: dict[str, Any], blocked: int, repeat: Repeat) -> None:
    """The preflight's part of `status`: URL verdicts, blocked rows, rows never checked."""
    urls = attachments["urls"]
    if urls:
        click.echo("attachment URLs checked: " + ", ".join(f"{n} {verdict}" for verdict, n in urls.items()))
    if blocked:
        click.echo(
            f"{rows_are(blocked)} blocked (an attachment failed its check): "
            f"`{repeat.command('export --status blocked')}` shows why; after a fix, "
            f"`{repeat.command('retry --blocked')}`."
        )
    if attachments["never_checked"]:
        click.echo(
            f"{plural(attachments['never_checked'], 'pending row')} never had their attachments checked: "
            f"`{repeat.command('check')}` checks them (or `run --preflight`)."
        )


def print_summary(
    summary: RunSummary,
    as_json: bool,
    repeat: Repeat = NO_REPEAT,
    quiet: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """The end of a run: this run's requests, outcomes and errors, then the whole ledger's totals and codes
    (follow-up commands repeat `repeat`'s options; with `quiet`, no follow-up hint). `extra`: more keys of
    the JSON document (what the load found, shown in text when it happened)."""
    if as_json:
        click.echo(json.dumps({**summary.as_dict(), **(extra or {})}, indent=2))
        return
    d = summary.as_dict()
    c = d["counts"]
    run_ = d["this_run"]
    head = "interrupted after" if d["interrupted"] else "done in"
    click.echo(
        f"{head} {d['seconds']:.1f} s. This run: {run_['requests']:,} requests ({d['requests_per_second']:,.0f}/s), "
        f"{run_['succeeded']:,} created or found ({run_['recovered']:,} found by a batch listing), "
        + (f"{run_['conflict']:,} found in conflict, " if run_.get("conflict") else "")
        + f"{run_['failed']:,} failed, {run_['retries']:,} retr{'y' if run_['retries'] == 1 else 'ies'}"
        + (f", {run_['unreachable']:,} could not connect (not counted as attempts)" if run_.get("unreachable") else "")
    )
    for e in d["this_run_errors"][:5]:
        click.echo("  " + error_line(e["code"], e["rows"], e["message"], e["reference_id"]))
    for note in _run_notes(run_):
        click.echo(note)
    if not c:
        click.echo(f"ledger (every run): not read (it stayed locked); `{repeat.command('status')}` shows it")
    else:
        click.echo(
            f"ledger (every run): {c['succeeded']:,} succeeded, {c['failed']:,} failed, {c['uncertain']:,} "
            "uncertain, "
            + (f"{c['conflict']:,} conflict, " if c.get("conflict") else "")
            + (f"{c['blocked']:,} blocked, " if c.get("blocked") else "")
            + f"{c['pending'] + c['in_flight']:,} pending"
        )
    for line in error_lines(d["errors"]):
        click.echo("  " + line)
    if c.get("blocked"):
        click.echo(
            f"{rows_are(c['blocked'])} blocked (an attachment failed its check; never sent): see them with "
            f"`{repeat.command('export --status blocked')}`; after a fix, `{repeat.command('retry --blocked')}`"
        )
    if c.get("conflict"):
        click.echo(conflict_hint(c["conflict"], repeat))
    held = (extra or {}).get("held_back_conflicts")
    if held:
        click.echo(
            f"{rows_are(held)} held back by this load: sent before with another payload, their jobs hold the "
            f"old data (not sent again; `{repeat.command('plan MANIFEST')}` lists them)"
        )
    if not quiet:
        click.echo(f"export the reference_id → job_id mapping with: {repeat.command('export -o jobs.csv')}")


B = TypeVar("B", bound="tqdm[NoReturn]")


def on_monotonic_time(bar: B) -> B:
    """`bar` timed by the monotonic clock: tqdm times its elapsed time, rate and ETA by `time.time()`, which an
    NTP step moves (an hour elapsed in an 8 s run, or a negative one)."""
    bar._time = time.monotonic  # type: ignore[attr-defined]
    bar.start_t = bar.last_print_t = time.monotonic()
    return bar


class ProgressDisplay:
    """A tqdm bar on a terminal; otherwise (or with --quiet) a line every few seconds on stderr."""

    def __init__(self, quiet: bool, silent: bool = False) -> None:
        self.bar: tqdm[NoReturn] | None = None
        self.quiet = quiet
        self.silent = silent  #: -q: no bar and no status lines (notices still: they are warnings)
        self.tty = sys.stderr.isatty() and not quiet
        self.last_line = 0.0
        self.told = 0  #: notices already printed
        #: update() may come from a thread (a PostgreSQL ledger's statement watch tells its waits from one)
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, p: Progress) -> None:
        """Show the run's live counters, and each new notice once, on stderr. The bar counts this run's work
        only (its rate and ETA too); what holds the run up is its description."""
        with self._lock:
            self._update(p)

    def _update(self, p: Progress) -> None:
        notices = p.notices
        while self.told < len(notices):
            line = f"notice: {notices[self.told]}"
            self.told += 1
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                click.echo(line, err=True)
        if self.silent:
            return
        trouble = p.trouble
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = on_monotonic_time(tqdm(total=p.total - p.done_before, unit="job", ncols=bar_width()))
            else:
                self.bar.ncols = bar_width()
            self.bar.set_description_str(trouble or "", refresh=False)
            self.bar.set_postfix_str(postfix(p), refresh=False)
            step = p.done - p.done_before - self.bar.n
            if step:
                self.bar.update(step)
            else:  # nothing finished: still redraw, so the elapsed time, the counters and the trouble move
                self.bar.refresh()
            return
        now = time.monotonic()
        if now - self.last_line >= 5.0:
            self.last_line = now
            elapsed = max(1e-9, now - p.started)
            click.echo(
                f"{p.done - p.done_before}/{p.total - p.done_before} done: {postfix(p, ' ')}, "
                f"{p.requests / elapsed:.0f} req/s" + (f"; {trouble}" if trouble else ""),
                err=True,
            )

    def close(self) -> None:
        """Remove the bar (if any); safe to call more than once."""
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


def _run_notes(run_: dict[str, Any]) -> list[str]:
    """The lines a run's summary adds for what happened only sometimes (429s, capped Retry-Afters, protocol
    errors, lost leases, rows settled for an earlier run, late answers ignored), from `as_dict()["this_run"]`."""
    notes: list[str] = []
    if run_["throttled"]:
        notes.append(
            f"throttling: the API asked {run_['throttled']} times to slow down (429); the run waited "
            "(no attempt counted, no row failed for it)"
        )
    if run_.get("retry_after_capped"):
        notes.append(
            f"{run_['retry_after_capped']} Retry-After answers asked to wait longer than --max-retry-after "
            f"(up to {run_['retry_after_longest_seconds']:.0f} s); the run waited at most that"
        )
    if run_.get("protocol_errors"):
        notes.append(
            f"{run_['protocol_errors']} answers did not fit their requests (protocol errors): those rows are "
            "uncertain until a batch listing decides"
        )
    if run_.get("lost_leases_not_sent"):
        notes.append(
            f"{run_['lost_leases_not_sent']} claimed rows not sent: this run stalled past their lease and another "
            "run had taken them over"
        )
    if run_.get("settled_from_earlier_runs"):
        notes.append(
            f"{run_['settled_from_earlier_runs']:,} rows an earlier run left uncertain were settled by a batch "
            "listing (found, in conflict, or not there and sent again)"
        )
    if run_["ignored_stale_results"]:
        notes.append(
            f"{run_['ignored_stale_results']} late answers ignored: their rows had been taken over by "
            "another run after this one's lease expired"
        )
    return notes


def bar_width() -> int:
    """The bar's width: the terminal's (as it is now: it may be resized), less two columns, so the `^C` a
    terminal echoes on Ctrl-C lands beside the bar instead of wrapping it onto a second line."""

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 80
    return max(20, columns - 2)


def postfix(p: Any, sep: str = "=") -> str:
    """The counters beside the bar, ok first: rows waiting to retry now (not the running total of retries),
    and the throttles (429s) so far, once there are any."""
    parts = [("ok", p.succeeded), ("failed", p.failed), ("retrying", getattr(p, "retrying_now", 0))]
    if p.throttled:
        parts.append(("throttled", p.throttled))
    return ", ".join(f"{name}{sep}{n}" if sep == "=" else f"{n} {name}" for name, n in parts)


def retry_report(
    n: int | None,
    codes: tuple[str, ...],
    failed: dict[str | None, int],
    as_json: bool,
    repeat: Repeat = NO_REPEAT,
    blocked: int | None = None,
    payloadless: int = 0,
) -> None:
    """What `retry` did: `n` failed rows (None: not asked) and `blocked` rows (None: not asked) pending again;
    `payloadless` failed rows left failed, having no payload to send. For a code no failed row has, says so and
    lists the codes there are (`failed`: failed rows per code, before the retry). Follow-up commands repeat
    `repeat`'s options."""
    missing = [c for c in codes if c not in failed]
    if as_json:
        document: dict[str, Any] = {}
        if n is not None:
            document.update(
                pending_again=n,
                codes_not_found=missing,
                failed_codes={str(k): v for k, v in failed.items()},
                no_payload=payloadless,
            )
        if blocked is not None:
            document["blocked_pending_again"] = blocked
        click.echo(json.dumps(document, indent=2))
        return
    run = repeat.command("run")
    if blocked is not None:
        click.echo(
            f"{plural(blocked, 'blocked row')} {'is' if blocked == 1 else 'are'} pending again; "
            f"`{run} --preflight` checks their attachments again and sends them."
        )
    if n is None:
        return
    click.echo(
        f"{plural(n, 'failed row')} {'is' if n == 1 else 'are'} pending again"
        + (f"; `{run}` sends them." if n else ".")
    )
    if payloadless:
        click.echo(
            f"{plural(payloadless, 'failed row')} {'stays' if payloadless == 1 else 'stay'} failed: adopted, with no "
            f"payload to send; load the manifest that holds {'it' if payloadless == 1 else 'them'}, then `{run}`.",
            err=True,
        )
    if missing:
        there = ", ".join(f"{code or '(no code)'} × {count}" for code, count in failed.items())
        click.echo(
            f"no failed row has error code {', '.join(missing)}; "
            + (f"failed rows by code: {there}." if failed else "there are no failed rows."),
            err=True,
        )


def uncertain_reasons(
    groups: list[tuple[str, str | None, list[tuple[int, str]]]], repeat: Repeat = NO_REPEAT
) -> list[str]:
    """Why rows are still uncertain after a lookup, and what to do (groups as Ledger.uncertain_groups; the
    commands named repeat `repeat`'s options)."""
    reasons = []
    for project, batch, rows in groups:
        example = rows[0][1]
        if batch is None:
            reasons.append(
                f"{plural(len(rows), 'row')} of project {project!r} (e.g. {example!r}) went to the project's "
                "default batch, whose id is known only once a job of ours in it has succeeded: after a run puts "
                f"one more job there (--default-batch), `{repeat.command('reconcile', api=True)}` finds them; or "
                f"check them in GT Studio (`{repeat.command('export --status uncertain')}`)."
            )
        else:
            reasons.append(
                f"{plural(len(rows), 'row')} of project {project!r} in batch {batch} (e.g. {example!r}) were not "
                f"settled by the listing (an error or a wait): run `{repeat.command('reconcile', api=True)}` "
                "again."
            )
    return reasons


def print_row(row: dict[str, Any], as_json: bool) -> None:
    """One ledger row (`uploader show`): its state, job_id, attempts, last error, times and payload."""
    if as_json:
        click.echo(json.dumps(row, indent=2, ensure_ascii=False, default=str))
        return
    width = max(len(k) for k in row)
    for key, value in row.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, ensure_ascii=False)
        click.echo(f"{key:<{width}}  {'' if value is None else value}")


def print_settings(resolved: Resolved, as_json: bool) -> None:
    """`uploader config`: each setting's value and source, the profile and the files looked at."""
    if as_json:
        click.echo(json.dumps(resolved.as_dict(), indent=2, default=str))
        return
    click.echo(f"settings of `uploader {resolved.command}`; profile: {resolved.profile or '(none)'}")
    for path, exists in resolved.files:
        click.echo(f"  config file {path}" + ("" if exists else " (not found)"))
    width = max((len(s.key) for s in resolved.settings), default=0)
    for s in resolved.settings:
        value = "" if s.value is None else (", ".join(map(str, s.value)) if isinstance(s.value, tuple) else s.value)
        click.echo(f"{s.key:<{width}}  {value!s:<24}  {s.source}")


class SyncDisplay:
    """`sync`'s progress as `run` shows its own (`ProgressDisplay`): on a terminal a tqdm bar of final jobs /
    tracked jobs (one per --watch round), otherwise a line every few seconds on stderr; nothing with -q."""

    def __init__(self, quiet: bool, silent: bool = False) -> None:
        self.bar: tqdm[NoReturn] | None = None
        self.silent = silent
        self.tty = sys.stderr.isatty() and not quiet
        self.last_line = 0.0
        self.line = self.shown = ""  #: without a terminal: the latest status line, and the last one printed

    def __enter__(self) -> SyncDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, report: SyncReport) -> None:
        if self.silent:
            return
        words = f"checked={report.checked}, results={report.results}, failed={len(report.result_errors)}"
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = on_monotonic_time(  # its rate: jobs final since the bar began
                    tqdm(total=report.tracked, initial=report.final, unit="job", desc="final", ncols=bar_width())
                )
            self.bar.total = report.tracked
            self.bar.n = report.final
            self.bar.set_postfix_str(words, refresh=False)
            self.bar.refresh()
            return
        self.line = f"{report.final}/{report.tracked} final: {words.replace('=', ' ')}"
        now = time.monotonic()
        if now - self.last_line >= 5.0:
            self.last_line = now
            self.shown = self.line
            click.echo(self.line, err=True)

    def close(self) -> None:
        """Remove the bar (if any), or print the last line if the counts moved since the last one printed (so
        the last line agrees with the summary); safe to call more than once."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.line != self.shown:
            self.shown = self.line
            click.echo(self.line, err=True)


def not_found_text(missing: list[tuple[str, str]], examples: int = 5) -> str:
    """What `sync` says of rows (reference_id, job_id) whose job the API does not know."""
    named = ", ".join(f"{ref} (job {job})" for ref, job in missing[:examples])
    more = f" and {len(missing) - examples} more" if len(missing) > examples else ""
    return (
        f"the API does not know the job of {plural(len(missing), 'row')}: {named}{more}. Deleted at the "
        "platform, or never created although the API answered its creation: recorded as failed "
        "(job_not_found, the job_id in its message); `uploader retry --error-code job_not_found` sends "
        f"{'it' if len(missing) == 1 else 'them'} again (the API refuses a twin with FS_0001)"
    )
