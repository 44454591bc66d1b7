"""The CLI's face of the attachment preflight: its options (shared by `check` and `run --preflight`), the
duration type they take, and the report it prints."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from uploader.cli.hints import NO_REPEAT, Repeat

if TYPE_CHECKING:
    from uploader.send import HostSample, PreflightOptions, PreflightReport, SignedUrls

__all__ = [
    "Duration",
    "duration_text",
    "min_url_validity_option",
    "preflight_dict",
    "preflight_options",
    "preflight_settings",
    "print_preflight",
    "print_sample",
    "signed_dict",
    "signed_line",
]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


if TYPE_CHECKING:  # click 8.5 types ParamType by its value and input; older clicks cannot subscript it
    _ParamType = click.ParamType[dt.timedelta, Any]
else:
    _ParamType = click.ParamType


class Duration(_ParamType):
    """A length of time: `90` or `90s`, `30m`, `24h`, `7d`, `2w`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dt.timedelta:
        if isinstance(value, dt.timedelta):
            return value
        m = _DURATION.fullmatch(str(value).strip().lower())
        if not m:
            self.fail(f"{value!r} is not a duration such as 90s, 30m, 24h or 7d", param, ctx)
        return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2) or "s"])


def duration_text(value: dt.timedelta) -> str:
    """A length of time as Duration reads it: in the largest unit that holds it whole (`24h`, `7d`, `90s`)."""
    seconds = value.total_seconds()
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def min_url_validity_option(help_text: str) -> Callable[[F], F]:
    """--min-url-validity (check, run, load, plan): how long a signed URL must stay valid from now."""
    return click.option(
        "--min-url-validity", type=Duration(), default="24h", show_default=True, metavar="DURATION", help=help_text
    )


def preflight_options(func: F) -> F:
    """The options of a preflight (`uploader check`, `run --preflight`)."""
    for decorator in reversed(
        [
            click.option(
                "--check-concurrency",
                type=click.IntRange(1, 4096),
                default=64,
                show_default=True,
                help="Attachment URLs checked at once.",
            ),
            click.option(
                "--per-host-rate",
                type=click.FloatRange(min=0.1),
                default=50.0,
                show_default=True,
                help="At most this many requests per second to any one host (a check makes one or two).",
            ),
            click.option(
                "--check-timeout",
                type=click.FloatRange(min=0.1),
                default=10.0,
                show_default=True,
                help="Seconds before an attachment URL counts as unreachable.",
            ),
            click.option(
                "--recheck-after",
                type=Duration(),
                metavar="DURATION",
                help="Check again URLs whose verdict is older than this (e.g. 7d); by default a verdict is "
                "kept until `uploader retry --blocked`.",
            ),
            min_url_validity_option("Block rows whose signed URL expires sooner than this from now."),
        ]
    ):
        func = decorator(func)
    return func


def preflight_settings(
    check_concurrency: int,
    per_host_rate: float,
    check_timeout: float,
    recheck_after: dt.timedelta | None,
    min_url_validity: dt.timedelta,
    block: bool = True,
    sign_url: Callable[[str], str] | None = None,
) -> PreflightOptions:
    """The library's PreflightOptions for these option values (`sign_url`: --sign's signer)."""
    from uploader.send import PreflightOptions

    return PreflightOptions(
        concurrency=check_concurrency,
        per_host_rate=per_host_rate,
        timeout=check_timeout,
        recheck_after=recheck_after,
        min_url_validity=min_url_validity,
        block=block,
        sign_url=sign_url,
    )


def print_preflight(
    report: PreflightReport, as_json: bool, repeat: Repeat = NO_REPEAT, blocking: bool = True, err: bool = False
) -> None:
    """What the preflight checked and which rows it held back; on stderr with `err` (a run's output follows)."""
    if as_json:
        click.echo(json.dumps(preflight_dict(report), indent=2))
        return

    def echo(line: str) -> None:
        click.echo(line, err=err)

    verdicts = " · ".join(f"{v} {n:,}" for v, n in sorted(report.verdicts.items()))
    echo(
        f"preflight: {report.rows:,} pending rows, {report.url_uses:,} attachment URLs; checked {report.checked:,} "
        f"now ({verdicts or 'none'}), {report.known:,} known from earlier checks"
    )
    if report.released:
        echo(f'  {report.released:,} rows held back by an earlier check while a host said "not now": checked again')
    if report.earliest_expiry is not None:
        echo(
            f"  signed URLs: the earliest expires {report.earliest_expiry:%Y-%m-%d %H:%M} UTC; "
            f"{report.expiring:,} rows expire too soon"
        )
    if not report.bad_rows:
        echo("  every attachment opens")
        return
    verb = "blocked (never sent until released)" if blocking else "would be blocked (sent anyway: --allow-blocked)"
    echo(f"  {report.bad_rows:,} rows {verb}, e.g.:")
    for ref, reason in report.examples:
        echo(f"    {ref}  {reason}")
    if blocking and report.unavailable:
        echo(
            f'  {report.unavailable:,} URLs answered "not now" (HTTP 429, 503, ...) after the waits they asked for: '
            f"their rows are checked again by the next `{repeat.command('check')}` or `run --preflight`"
        )
    if blocking:
        echo(
            f"  after fixing them: `{repeat.command('retry --blocked')}`; to send them as they are: "
            "`uploader run --allow-blocked`"
        )


def preflight_dict(report: PreflightReport) -> dict[str, Any]:
    return {
        "rows": report.rows,
        "url_uses": report.url_uses,
        "checked": report.checked,
        "known": report.known,
        "verdicts": dict(report.verdicts),
        "bad_rows": report.bad_rows,
        "blocked": report.blocked,
        "expiring": report.expiring,
        "earliest_expiry": report.earliest_expiry.isoformat() if report.earliest_expiry else None,
        "examples": [{"reference_id": r, "reason": why} for r, why in report.examples],
        "released": report.released,
    }


def signed_line(signed: SignedUrls) -> str | None:
    """What `load` and `run` say of the pending rows' signed URLs, or None when there is none."""
    if not signed.urls or signed.earliest is None:
        return None
    soon = f"{signed.expiring:,} expire before {signed.not_before:%Y-%m-%d %H:%M} UTC (--min-url-validity)"
    return (
        f"  signed URLs: {signed.urls:,} in pending rows; {soon}; the earliest at {signed.earliest:%Y-%m-%d %H:%M} UTC"
    )


def signed_dict(signed: SignedUrls) -> dict[str, Any]:
    return {
        "urls": signed.urls,
        "expiring": signed.expiring,
        "not_before": signed.not_before.isoformat() + "Z",
        "earliest_expiry": signed.earliest.isoformat() if signed.earliest else None,
    }


def print_sample(hosts: dict[str, HostSample], as_json: bool) -> None:
    """A sampled check: per host, URLs among pending rows, how many checked, the failure rate, an example."""
    if as_json:
        click.echo(
            json.dumps(
                {
                    host: {
                        "urls": h.urls,
                        "checked": h.checked,
                        "verdicts": dict(h.verdicts),
                        "failure_rate": round(h.failure_rate, 4),
                        "example": h.example,
                    }
                    for host, h in hosts.items()
                },
                indent=2,
            )
        )
        return
    if not hosts:
        click.echo("sample: no pending row has an attachment URL")
        return
    click.echo(
        f"sample: {sum(h.checked for h in hosts.values()):,} URLs checked on {len(hosts)} hosts "
        "(nothing blocked; run `uploader check` for every URL)"
    )
    for host, h in sorted(hosts.items(), key=lambda kv: -kv[1].failure_rate):
        click.echo(
            f"  {host}: {h.checked:,} of {h.urls:,} URLs checked, {h.failure_rate:.1%} bad"
            + (f", e.g. {h.example}" if h.example else "")
        )
