"""How command results are shown to a person: load reports, run summaries, status, progress.

It exists so that uploader.cli.commands keeps only the click commands, their options and the mapping of errors to
exit codes; everything here turns a library result into lines on stdout/stderr (or JSON). Like the CLI,
it imports nothing heavy at module level: tqdm is imported only when a progress bar is first drawn.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from tqdm import tqdm

    from uploader.ledger import StatusReport
    from uploader.load import LoadReport
    from uploader.send import Progress, RunSummary

from uploader.cli.hints import NO_REPEAT, Repeat

__all__ = ["CONFLICT_HINT", "ProgressDisplay", "conflict_hint", "print_load", "print_status", "print_summary"]

#: What a person is told about rows in state `conflict` (status and the run summary).
CONFLICT_HINT = (
    "{n} rows are in conflict: their job exists at the API but may hold other data than the manifest says "
    "(created_elsewhere: the reference_id was used before this ledger sent it; payload_changed: an earlier "
    "send of another payload may have created it; duplicate_job_id: the API gave its job_id to another row "
    "too). They are never sent again; check them with `{export}`."
)


def conflict_hint(n: int, repeat: Repeat = NO_REPEAT) -> str:
    """CONFLICT_HINT for `n` rows, its export command repeating the current --ledger."""
    return CONFLICT_HINT.format(n=n, export=repeat.command("export --status conflict"))


def print_load(report: LoadReport) -> None:
    """What loading a manifest did: new, unchanged, updated and conflicting rows."""
    if report.already_loaded:
        click.echo(f"{report.manifest}: already loaded with the same options ({report.rows} rows); nothing to do.")
    else:
        click.echo(
            f"{report.manifest}: {report.rows} rows: {report.new} new, {report.unchanged} unchanged, "
            f"{report.updated} updated, {report.conflicts} conflicting ({report.seconds:.2f} s)"
        )
    if report.updated:
        click.echo(f"  updated (payload changed, will be sent): {', '.join(report.updated_examples)}")
    if report.conflicts:
        click.echo(
            f"  conflicts: {report.conflicts} rows already sent with a different payload were left unchanged "
            f"(not sent again), e.g. {', '.join(report.conflict_examples)}",
            err=True,
        )


def print_status(report: StatusReport, as_json: bool, repeat: Repeat = NO_REPEAT,
                 projects: dict[str, dict[str, int]] | None = None) -> None:
    """The ledger's state counts (and per project, when `projects` holds more than one), error codes and
    live workers, with a hint for what to do next (follow-up commands repeat `repeat`'s options)."""
    by_project = projects if projects and len(projects) > 1 else None
    if as_json:
        data = report.as_dict()
        if by_project:
            data["projects"] = by_project
        click.echo(json.dumps(data, indent=2))
        return
    _print_counts(report, by_project)
    _print_activity(report)
    _print_follow_ups(report, repeat)


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
    if report.error_codes:
        click.echo("error codes (failed, uncertain, conflict, waiting to retry):")
        for code, n in report.error_codes.items():
            click.echo(f"  {code:<24} {n}")


def _print_activity(report: StatusReport) -> None:
    """`status`: the oldest pending row, the last activity, and the live workers."""
    if report.oldest_pending:
        click.echo(f"oldest pending row loaded at {report.oldest_pending.isoformat()}Z")
    if report.last_activity:
        click.echo(f"last activity {report.last_activity.isoformat()}Z")
    if report.live_workers:
        total = sum(w["requests_per_second"] for w in report.live_workers)
        click.echo(f"{len(report.live_workers)} live workers ({total:.0f} requests/s together):")
    for w in report.live_workers:
        click.echo(
            f"  {w['hostname']} pid {w['pid']}: {w['sent']} requests since {w['started_at']} "
            f"({w['requests_per_second']:.0f}/s), last heartbeat {w['heartbeat_age_seconds']:.0f} s ago"
        )


def _print_follow_ups(report: StatusReport, repeat: Repeat) -> None:
    """`status`: what to do about uncertain, conflict and failed rows (and where the jobs came from)."""
    if report.counts.get("uncertain"):
        click.echo(
            f"{report.counts['uncertain']} rows are uncertain: the job exists at the API but its job_id is not "
            "known yet. A run looks them up by itself; if they stay uncertain, run "
            f"`{repeat.command('reconcile', api=True)}`."
        )
    if report.origins:
        click.echo("jobs by origin: " + ", ".join(f"{k} {v}" for k, v in report.origins.items()))
    if report.counts.get("conflict"):
        click.echo(conflict_hint(report.counts["conflict"], repeat))
    if report.counts.get("failed"):
        click.echo(f"failed rows: fix the cause, then `{repeat.command('retry --error-code CODE')}` or "
                   f"`{repeat.command('retry --all')}`.")


def print_summary(summary: RunSummary, as_json: bool, repeat: Repeat = NO_REPEAT) -> None:
    """The end of a run: this run's requests and outcomes, the ledger's totals, the top error codes (follow-up
    commands repeat `repeat`'s options)."""
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
        return
    d = summary.as_dict()
    c = d["counts"]
    click.echo(
        f"done in {d['seconds']:.1f} s: {d['this_run']['requests']} requests ({d['requests_per_second']:.0f}/s); "
        f"ledger: {c['succeeded']} succeeded, {c['failed']} failed, {c['uncertain']} uncertain, "
        + (f"{c['conflict']} conflict, " if c.get("conflict") else "")
        + (f"{c['blocked']} blocked, " if c.get("blocked") else "")
        + f"{c['pending'] + c['in_flight']} pending"
    )
    if c.get("blocked"):
        click.echo(f"{c['blocked']} rows are blocked (an attachment failed its check; never sent): see them with "
                   f"`{repeat.command('export --status blocked')}`; after a fix, `{repeat.command('retry --blocked')}`")
    run_ = d["this_run"]
    click.echo(
        f"this run: {run_['succeeded']} created or found ({run_['recovered']} recovered after FS_0001), "
        + (f"{run_['conflict']} found in conflict, " if run_.get("conflict") else "")
        + f"{run_['failed']} failed, {run_['retries']} retries, {run_['throttled']} throttled"
        + (f", {run_['unreachable']} could not connect (not counted as attempts)" if run_.get("unreachable") else "")
    )
    if run_.get("retry_after_capped"):
        click.echo(f"{run_['retry_after_capped']} Retry-After answers asked to wait longer than --max-retry-after "
                   f"(up to {run_['retry_after_longest_seconds']:.0f} s); the run waited at most that")
    if run_.get("protocol_errors"):
        click.echo(f"{run_['protocol_errors']} answers did not fit their requests (protocol errors): those rows are "
                   "uncertain until a batch listing decides")
    if c.get("conflict"):
        click.echo(conflict_hint(c["conflict"], repeat))
    if run_["ignored_stale_results"]:
        click.echo(f"{run_['ignored_stale_results']} late answers ignored: their rows had been taken over by "
                   "another run after this one's lease expired")
    if d["top_error_codes"]:
        click.echo("top error codes: " + ", ".join(f"{k} × {v}" for k, v in d["top_error_codes"].items()))
    click.echo(f"export the reference_id → job_id mapping with: {repeat.command('export -o jobs.csv')}")


class ProgressDisplay:
    """A tqdm bar on a terminal; otherwise (or with --quiet) a line every few seconds on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.bar: tqdm[NoReturn] | None = None
        self.quiet = quiet
        self.tty = sys.stderr.isatty() and not quiet
        self.last_line = 0.0
        self.told = 0  #: notices already printed

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, p: Progress) -> None:
        """Show the run's live counters, and each new notice once, on stderr."""
        notices = getattr(p, "notices", ())
        while self.told < len(notices):
            line = f"notice: {notices[self.told]}"
            self.told += 1
            if self.bar is not None:
                self.bar.write(line, file=sys.stderr)
            else:
                click.echo(line, err=True)
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=p.total, initial=p.done_before, unit="job", dynamic_ncols=True)
            self.bar.set_postfix(ok=p.succeeded, failed=p.failed, retrying=p.retrying, refresh=False)
            self.bar.update(p.done - self.bar.n)
            return
        now = time.monotonic()
        if now - self.last_line >= 5.0:
            self.last_line = now
            elapsed = max(1e-9, now - p.started)
            click.echo(
                f"{p.done}/{p.total} done: {p.succeeded} ok, {p.failed} failed, {p.retrying} retries, "
                f"{p.requests / elapsed:.0f} req/s",
                err=True,
            )

    def close(self) -> None:
        """Remove the bar (if any); safe to call more than once."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
