"""`uploader report`: one self-contained HTML page of a ledger (no script, no network; inline style; charts
drawn here as SVG, so the page opens offline, prints as it shows, and stays small).

Pure functions from aggregated figures (uploader.ledger.ReportData) to text.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from uploader.api import EXISTS_CODES, PERMANENT_CODES, RETRYABLE_CODES
from uploader.cli.output import short_message
from uploader.ledger import GONE_CODE

if TYPE_CHECKING:
    from uploader.ledger import ReportData

__all__ = [
    "Provenance",
    "advice",
    "axis_ticks",
    "bar_chart",
    "percentages",
    "render_report",
    "share_bar",
    "stacked_chart",
    "time_marks",
]

#: One colour per state, the same in every chart and table.
STATE_COLOURS = {
    "pending": "#8a94a6",
    "in_flight": "#3b82f6",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "uncertain": "#d97706",
    "conflict": "#9333ea",
    "blocked": "#0f766e",
}

_STYLE = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#fff}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
margin:0 auto;max-width:1100px;padding:16px}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid var(--line);
padding-bottom:.2em}h3{font-size:1em;margin:.8em 0 .3em}
.muted{color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));gap:8px}
.card{border:1px solid var(--line);border-left:6px solid var(--c);border-radius:6px;padding:6px 10px}
.card b{display:block;font-size:1.4em}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.charts.wide{grid-template-columns:repeat(auto-fit,minmax(320px,1fr))}
.legend{display:flex;flex-wrap:wrap;gap:2px 14px;font-size:.85em;color:var(--muted);margin-bottom:2px}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:5px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px;break-inside:avoid}
figcaption{font-weight:600;margin-bottom:4px}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:var(--muted)}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:.93em}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid var(--line);vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code{font-size:.92em;overflow-wrap:anywhere}code.key{overflow-wrap:normal}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere}
@media (max-width:600px){body{font-size:14px;padding:10px}svg text{font-size:14px}.charts{grid-template-columns:1fr}
dl{grid-template-columns:1fr}dt{margin-top:6px}
table,tbody,tr,td{display:block}thead{display:none}tr{border:1px solid var(--line);border-radius:6px;
margin-bottom:8px;padding:4px 0}td{border:0;padding:2px 10px}td.n{text-align:left}
td::before{content:attr(data-label);display:inline-block;width:7em;margin-right:.5em;color:var(--muted)}}
@media print{body{max-width:none;padding:0}.scroll{overflow:visible}h2{break-after:avoid}}
"""


@dataclass(frozen=True)
class Provenance:
    """What produced the report: shown at its foot."""

    command: str
    ledger: str
    generated_at: dt.datetime
    versions: dict[str, str]


def advice(code: str, status: str) -> str:
    """What to do about rows with this error code in this state, in a user's words."""
    if code in ("url_expires_soon", "url_signature"):
        return "Sign the attachment URLs again, load the manifest again, then `uploader check`."
    if code.startswith("url_"):
        return (
            "Check access to the attachment (open the URL: permissions, host, file), then "
            "`uploader check` and `uploader retry --blocked`."
        )
    if code == GONE_CODE:
        return (
            "The platform does not know its job (deleted there, or never created): "
            "`uploader retry --error-code job_not_found` sends it again."
        )
    if code == "FS_0007":
        return (
            "The platform could not open the attachment: fix its access, then "
            "`uploader retry --error-code FS_0007` sends it again."
        )
    if code in ("http_429", "rate_limited"):
        return "Throttled: the API was busy. The next `uploader run` sends it again (a lower `--rate` throttles less)."
    if status == "uncertain":
        return "The job may exist: `uploader reconcile` looks it up."
    if status == "conflict" or code in EXISTS_CODES:
        return "The job exists with other data: compare with `uploader show REFERENCE_ID`."
    if status == "pending" or code in RETRYABLE_CODES or code.startswith("http_5"):
        return "Transient: it is retried by the next `uploader run` (`uploader retry` for failed rows)."
    if code in PERMANENT_CODES or status == "failed":
        return "Fix the manifest row (the API's message says what), load it again, then `uploader run`."
    return "See `uploader show REFERENCE_ID`."


def _prose(words: str) -> str:
    """Escaped text with each `command` set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(words))


def _n(value: int) -> str:
    return f"{value:,}"


def _time(t: dt.datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC" if t else "—"


def bar_chart(
    labels: Sequence[str],
    values: Sequence[int],
    colours: Sequence[str] | str,
    unit: str,
    width: int = 400,
    height: int = 190,
    marks: Sequence[int] | None = None,
) -> str:
    """A vertical bar chart as inline SVG: every bar with a <title> (its label and value), x labels under
    the bars in `marks` (indices; by default about six, evenly spaced)."""
    layers = [(unit, colours, list(values))]
    return stacked_chart(labels, layers, unit, width=width, height=height, marks=marks)


def stacked_chart(
    labels: Sequence[str],
    layers: Sequence[tuple[str, Sequence[str] | str, Sequence[int]]],
    unit: str,
    width: int = 400,
    height: int = 190,
    marks: Sequence[int] | None = None,
) -> str:
    """Bars of stacked layers (name, colour or one per bar, values), the first at the bottom, as inline SVG:
    a y axis at round values, a <title> per bar naming every layer, x labels under the bars in `marks`."""
    totals = [sum(vs) for vs in zip(*(v for _, _, v in layers))] if layers else []
    ticks = axis_ticks(max(totals, default=0))
    top = ticks[-1]
    left, bottom, pad = 44, 22, 6
    plot_w, plot_h = width - left - pad, height - bottom - pad
    step = plot_w / max(len(totals), 1)
    bar = min(max(step * 0.8, 0.8), 48)  # a lone bucket is a bar, not a block
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(unit)}">']
    for tick in ticks:
        y = pad + plot_h * (1 - tick / top)
        parts.append(
            f'<line x1="{left}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_short(tick)}</text>'
        )
    shown = set(range(0, len(labels), max(1, len(labels) // 6)) if marks is None else marks)
    for i, (label, total) in enumerate(zip(labels, totals)):
        x = left + i * step + (step - bar) / 2
        parts.append(f"<g><title>{escape(label)}: {_bar_title(total, unit, layers, i)}</title>")
        base = float(pad + plot_h)
        for _, colours, values in layers:
            h = plot_h * max(values[i], 0) / top
            colour = colours if isinstance(colours, str) else colours[i]
            if h > 0 or len(layers) == 1:
                parts.append(
                    f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}"/>'
                )
            base -= h
        parts.append("</g>")
        if i in shown:
            middle = x + bar / 2
            anchor = "end" if middle > width - 3 * pad - 14 else "middle"  # the last label inside the chart
            parts.append(
                f'<text x="{min(middle, width - pad):.1f}" y="{height - 6}" text-anchor="{anchor}">'
                f"{escape(label)}</text>"
            )
    if not any(totals):
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{pad + plot_h / 2:.1f}" text-anchor="middle">none</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bar_title(total: int, unit: str, layers: Sequence[tuple[str, object, Sequence[int]]], i: int) -> str:
    """A bar's tooltip: its total, and each layer's part when there are several."""
    if len(layers) == 1:
        return f"{_n(total)} {escape(unit)}"
    return f"{_n(total)} {escape(unit)} (" + ", ".join(f"{_n(v[i])} {escape(n)}" for n, _, v in layers) + ")"


def axis_ticks(top: int) -> list[int]:
    """The y axis's gridlines: 0 up to the first round value at or above `top`, in at most 4 round steps
    (1, 2, 2.5 or 5 times a power of ten), so the axis reads 0, 1k, 2k, 3k rather than 0, 1170, 2340."""
    if top <= 0:
        return [0, 1]
    step = next(s for s in _round_steps() if s * 4 >= top)
    return list(range(0, -(-top // step) * step + 1, step))


def _round_steps() -> Iterator[int]:
    """1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, …"""
    magnitude = 1
    while True:
        yield from (f * magnitude // 10 for f in ((10, 20, 50) if magnitude == 1 else (10, 20, 25, 50)))
        magnitude *= 10


def time_marks(times: Sequence[dt.datetime], bucket: int, most: int = 7) -> list[int]:
    """The buckets to label on a time axis: those at a round time (every 5, 10, 15, 30 minutes, 1, 2, 3, 6,
    12 hours, a day…), the shortest interval that gives at most `most` labels."""
    if not times:
        return []
    span = (times[-1] - times[0]).total_seconds()
    every = next((m * 60 for m in _ROUND_MINUTES if m * 60 >= bucket and span / (m * 60) < most), None)
    if every is None:
        every = bucket * (int(span / bucket / most) + 1)
    epoch = dt.datetime(1970, 1, 1)
    return [i for i, t in enumerate(times) if int((t - epoch).total_seconds()) % every == 0]


_ROUND_MINUTES = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2 * 1440, 7 * 1440)


def share_bar(
    counts: dict[str, int],
    width: int = 1000,
    height: int = 28,
    colours: Mapping[str, str] = STATE_COLOURS,
    what: str = "state",
) -> str:
    """One horizontal bar split by state (or another `what`), in their colours (cards beside it are its legend);
    each part's title gives its share, the shares adding up to 100% (`percentages`)."""
    total = sum(counts.values()) or 1
    shares = dict(zip(counts, percentages(list(counts.values()))))
    parts = [
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" style="height:{height}px" '
        f'role="img" aria-label="share by {escape(what, quote=True)}">'
    ]
    x = 0.0
    for state, n in counts.items():
        w = width * n / total
        if n:
            parts.append(
                f'<rect x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" '
                f'fill="{colours.get(state, "#999")}"><title>{escape(state)}: {_n(n)} '
                f"({shares[state]:.1f}%)</title></rect>"
            )
        x += w
    if not any(counts.values()):
        parts.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#e5e7eb"/>')
    parts.append("</svg>")
    return "".join(parts)


def percentages(counts: Sequence[int], places: int = 1) -> list[float]:
    """Each count's share of their sum in percent, at `places` decimals, by largest remainder rounding: the
    shares add up to exactly 100 (rounded each on its own, three thirds show 33.3% + 33.3% + 33.3% = 99.9%).
    Integer arithmetic, so no float error decides a remainder; all zero for counts that sum to zero."""
    total = sum(counts)
    if total <= 0:
        return [0.0] * len(counts)
    whole = 100 * 10**places  # 100% in units of the last shown decimal
    units = [n * whole // total for n in counts]
    by_remainder = sorted(range(len(counts)), key=lambda i: -(counts[i] * whole % total))
    for i in by_remainder[: whole - sum(units)]:
        units[i] += 1
    return [u / 10**places for u in units]


def _short(v: float) -> str:
    if v >= 1_000_000:
        return f"{v / 1_000_000:.1f}M"
    if v >= 10_000:
        return f"{v / 1000:.0f}k"
    return f"{v:.0f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """A table of already-escaped cells; the columns in `numeric` right-aligned."""
    th = "".join(f"<th{' class=n' if i in numeric else ''}>{h}</th>" for i, h in enumerate(head))
    body = "".join(
        "<tr>"
        + "".join(
            f'<td{" class=n" if i in numeric else ""} data-label="{escape(head[i], quote=True)}">{c}</td>'
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _states_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{_n(n)} {escape(s)}" for s, n in counts.items() if n) or "—"


def _totals(status: ReportData) -> str:
    cards = "".join(
        f'<div class="card" style="--c:{STATE_COLOURS.get(s, "#999")}" data-state="{escape(s)}">'
        f'<span class="muted">{escape(s)}</span><b>{_n(n)}</b></div>'
        for s, n in status.counts.items()
    )
    return (
        f"<h2>Totals by state</h2><p><b data-total>{_n(status.total)}</b> jobs.</p>"
        f'<div class="cards">{cards}</div>'
        f'<figure style="margin-top:12px"><figcaption>Share of the jobs by state</figcaption>'
        f"{share_bar(status.counts)}</figure>"
    )


#: The throughput charts' colours: jobs created, 429 answers, every other answer.
CREATED, THROTTLED, OTHER = STATE_COLOURS["succeeded"], "#d97706", "#cbd5e1"


def _throughput(data: ReportData) -> str:
    """One chart of the requests per bucket split by answer (jobs created at the bottom, read on the axis),
    and the 429s on their own scale (a few per minute would not show beside thousands of requests)."""
    if not data.throughput:
        return "<h2>Throughput</h2><p class=muted>Nothing sent yet.</p>"
    minutes = data.bucket // 60
    per = "minute" if minutes == 1 else f"{minutes} minutes"
    times = [t for t, *_ in data.throughput]
    labels = [f"{t:{'%H:%M' if data.bucket < 86400 else '%m-%d'}}" for t in times]
    marks = time_marks(times, data.bucket)
    created = [c for _, c, _, _ in data.throughput]
    throttled = [t for _, _, _, t in data.throughput]
    other = [max(0, r - c - t) for _, c, r, t in data.throughput]
    requests = sum(r for _, _, r, _ in data.throughput)
    layers = [("jobs created", CREATED, created), ("throttled (429)", THROTTLED, throttled), ("other", OTHER, other)]
    legend = "".join(
        f'<span><i style="background:{colour}"></i>{name}</span>'
        for name, colour in (("jobs created", CREATED), ("throttled (HTTP 429)", THROTTLED), ("other answers", OTHER))
    )
    charts = (
        f"<figure><figcaption>Requests per {per}</figcaption><div class=legend>{legend}</div>"
        f"{stacked_chart(labels, layers, 'requests', width=440, height=200, marks=marks)}</figure>"
        f"<figure><figcaption>Throttled (HTTP 429) per {per}</figcaption><div class=legend>&nbsp;</div>"
        f"{bar_chart(labels, throttled, THROTTLED, 'throttled', width=440, height=200, marks=marks)}</figure>"
    )
    derived = (
        "derived from each row's last answer: requests are its attempts, throttled means its last answer was HTTP 429."
    )
    if data.measured_from is None:
        source = f"{derived[:-1]} (this ledger's runs kept no counts per minute)."
    elif data.derived:
        source = (
            f"as the runs counted them from {data.measured_from:%Y-%m-%d %H:%M} UTC: every request, every 429 "
            f"answer. Before that (runs of an older uploader, which kept no counts) {derived}"
        )
    else:
        source = "as the runs counted them: every request, every 429 answer."
    return (
        f"<h2>Throughput</h2><p><b data-requests>{_n(requests)}</b> requests, <b data-created>{_n(sum(created))}"
        f"</b> jobs created, <b data-throttled>{_n(sum(throttled))}</b> throttled (HTTP 429).</p>"
        f"<p class=muted>Per {per} from {times[0]:%Y-%m-%d %H:%M} UTC, {source}</p>"
        f'<div class="charts wide">{charts}</div>'
    )


def _errors(data: ReportData) -> str:
    if not data.errors:
        return "<h2>Errors</h2><p class=muted>No row has an error.</p>"
    rows = [
        [
            f"<code class=key>{escape(code)}</code>",
            escape(status),
            _n(n),
            escape(short_message(message)),
            ", ".join(f"<code>{escape(r)}</code>" for r in examples),
            _prose(advice(code, status)),
        ]
        for code, status, n, message, examples in data.errors
    ]
    table = _table(["Code", "State", "Rows", "Message", "Examples", "What to do"], rows, numeric=[2])
    return "<h2>Errors</h2>" + _errors_left_out(data) + table


def _errors_left_out(data: ReportData) -> str:
    """What the errors table does not list (it lists the codes with the most rows), and where to find it."""
    left = data.error_groups - len(data.errors)
    if left <= 0:
        return ""
    rows = data.error_rows - sum(n for _, _, n, _, _ in data.errors)
    return (
        f"<p class=muted>The table lists the {len(data.errors)} codes with the most rows; {_n(left)} more "
        f"code{'s' if left != 1 else ''} ({_n(rows)} row{'s' if rows != 1 else ''}) are not listed here: "
        + _prose("`uploader status` lists them all.")
        + "</p>"
    )


def _attempts(data: ReportData) -> str:
    labels = [str(a) for a, _ in data.attempts]
    chart = bar_chart(labels, [n for _, n in data.attempts], "#6366f1", "rows", height=180)
    return (
        f"<h2>Attempts</h2><div class=charts><figure><figcaption>Rows by number of attempts</figcaption>"
        f"{chart}</figure></div>"
    )


def _open_rows(data: ReportData) -> str:
    out = [f"<h2>Uncertain rows ({_n(data.counts.get('uncertain', 0))})</h2>"]
    if data.uncertain:
        out.append(
            _table(
                ["reference_id", "Project", "Batch", "Code"],
                [
                    [f"<code>{escape(r)}</code>", escape(p), escape(b or "—"), escape(c or "—")]
                    for r, p, b, c in data.uncertain
                ],
            )
        )
        out.append("<p class=muted><code>uploader reconcile</code> looks them up.</p>")
    else:
        out.append("<p class=muted>None.</p>")
    out.append(f"<h2>Blocked rows ({_n(data.counts.get('blocked', 0))})</h2>")
    if data.blocked:
        out.append(
            _table(
                ["reference_id", "Project", "Code", "Why"],
                [
                    [f"<code>{escape(r)}</code>", escape(p), escape(c or "—"), escape(m or "")]
                    for r, p, c, m in data.blocked
                ],
            )
        )
    else:
        out.append("<p class=muted>None.</p>")
    return "".join(out)


def _breakdowns(data: ReportData) -> str:
    projects = _table(
        ["Project", "Jobs", "States"],
        [[escape(p), _n(sum(c.values())), _states_line(c)] for p, c in data.projects.items()],
        numeric=[1],
    )
    shown = (
        f" (the {len(data.batches)} largest of {_n(data.batch_count)})" if data.batch_count > len(data.batches) else ""
    )
    batches = _table(
        ["Project", "Batch", "Jobs", "States"],
        [[escape(p), _batch(b, data.batch_names), _n(sum(c.values())), _states_line(c)] for p, b, c in data.batches],
        numeric=[2],
    )
    return f"<h2>Per project</h2>{projects}<h2>Per batch{shown}</h2>{batches}"


def _batch(batch_id: str | None, names: dict[str, str]) -> str:
    """A batch as people know it: its name (when this ledger created it) and its id."""
    if batch_id is None:
        return "<span class=muted>no batch_id in the ledger</span>"
    name = names.get(batch_id)
    code = f"<code>{escape(batch_id)}</code>"
    return f"{escape(name)}<br><span class=muted>{code}</span>" if name else code


#: The results' colours: fetched, failed, not fetched yet.
RESULT_COLOURS = {
    "fetched": STATE_COLOURS["succeeded"],
    "failed": STATE_COLOURS["failed"],
    "not fetched yet": "#cbd5e1",
}


def _platform(data: ReportData) -> str:
    """The jobs by platform status (`uploader sync`), and the results of the final ones."""
    if not data.platform:
        return ""
    labels = list(data.platform)
    chart = bar_chart(labels, [data.platform[v] for v in labels], "#0ea5e9", "jobs", height=180)
    return (
        "<h2>On the platform</h2><p class=muted>Each job's status as <code>uploader sync</code> last read it.</p>"
        f"<div class=charts><figure><figcaption>Jobs by platform status</figcaption>{chart}</figure></div>"
        + _results(data)
    )


def _results(data: ReportData) -> str:
    """Of the jobs with a final status: results fetched (file or inline), failed and why, not fetched yet."""
    from uploader.ledger import RESULT_STATUSES

    results, final = data.results, ", ".join(RESULT_STATUSES)
    if results is None:
        return f"<h3>Results</h3><p class=muted>No job has a final status ({final}) yet: no result to fetch.</p>"
    counts = {"fetched": results.fetched, "failed": results.failed, "not fetched yet": results.not_fetched}
    cards = "".join(
        f'<div class="card" style="--c:{RESULT_COLOURS[k]}" data-result="{k}"><span class="muted">results {k}'
        f"</span><b>{_n(n)}</b></div>"
        for k, n in counts.items()
    )
    out = [
        f"<h3>Results</h3><p>Of the <b data-final>{_n(results.final)}</b> jobs with a final status ({final}): "
        f"<b>{_n(results.fetched)}</b> results fetched ({_n(results.files)} as files, {_n(results.inline)} "
        f"inline), <b>{_n(results.failed)}</b> failed, <b>{_n(results.not_fetched)}</b> not fetched yet.</p>"
        f'<div class="cards">{cards}</div><figure style="margin-top:12px"><figcaption>Share of the final jobs by '
        f"result</figcaption>{share_bar(counts, colours=RESULT_COLOURS, what='result')}</figure>"
    ]
    if results.errors:
        rows = [[escape(e), _n(n), f"<code>{escape(ref)}</code>"] for e, n, ref in results.errors]
        listed = sum(n for _, n, _ in results.errors)
        rest = f" The other {_n(results.failed - listed)} failed with other errors." if listed < results.failed else ""
        out.append(
            "<h3>Why results failed</h3><p class=muted>The error of each job's last try, its job_id and "
            f"reference_id left out, the most common first.{rest}</p>"
            + _table(["Error", "Jobs", "Example"], rows, numeric=[1])
        )
    if results.failed or results.not_fetched:
        out.append(
            "<p>" + _prose("`uploader sync --results DIR` fetches the failed and the missing results again.") + "</p>"
        )
    return "".join(out)


def _provenance(data: ReportData, made: Provenance) -> str:
    manifests = (
        "<br>".join(f"<code>{escape(p)}</code> ({_n(n)} rows, loaded {_time(t)})" for p, n, t in data.manifests) or "—"
    )
    versions = ", ".join(f"{escape(k)} {escape(v)}" for k, v in made.versions.items())
    items = [
        ("Command", f"<code>{escape(made.command)}</code>"),
        ("Ledger", f"<code>{escape(made.ledger)}</code>"),
        ("Manifests", manifests),
        ("First row loaded", _time(data.first)),
        ("Last activity", _time(data.last)),
        ("Report made", _time(made.generated_at)),
        ("Versions", versions),
    ]
    return "<h2>How this report was made</h2><dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def render_report(data: ReportData, made: Provenance) -> str:
    """The whole page."""
    sections = [
        _totals(data),
        _throughput(data),
        _errors(data),
        _attempts(data),
        _open_rows(data),
        _breakdowns(data),
        _platform(data),
        _provenance(data, made),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Upload report — {escape(made.ledger)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Upload report</h1><p class=muted>{_n(data.total)} jobs in <code>{escape(made.ledger)}</code>, "
        f"{_time(made.generated_at)}.</p>" + "".join(sections) + "</body></html>\n"
    )
