"""`uploader plan`: a dry run that sends nothing and writes nothing — the manifest against the ledger, what a
load would change, what a run would send and hold back, the batch it would use, and its first payload."""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

__all__ = ["EXIT_HELD_BACK", "plan_dict", "run_plan"]

#: A run would hold something back (conflicts, blocked rows, signed URLs expiring too soon).
EXIT_HELD_BACK = 3


class _Sendable:
    """What `plan_manifest` shows of the rows a run would send: expiring signed URLs, the first payload, the
    batches named."""

    def __init__(self, not_before: dt.datetime) -> None:
        self.not_before = not_before
        self.expiring = 0
        self.expiring_examples: list[str] = []
        self.first_payload: str | None = None
        self.batches: set[str | None] = set()

    def __call__(self, reference_id: str, payload: str, batch_id: str | None) -> None:
        from uploader.api import attachment_urls
        from uploader.send import row_problem

        if self.first_payload is None:
            self.first_payload = payload
        self.batches.add(batch_id)
        problem = row_problem(attachment_urls(json.loads(payload)), {}, self.not_before)
        if problem is not None:
            self.expiring += 1
            if len(self.expiring_examples) < 5:
                self.expiring_examples.append(f"{reference_id}  {problem[1]}")


def plan_dict(plan: Any, sendable: _Sendable, held_back: int) -> dict[str, Any]:
    return {
        "manifest": plan.manifest,
        "rows": plan.rows,
        "new": plan.new,
        "unchanged": plan.unchanged,
        "changed": plan.changed,
        "conflicts": plan.conflicts,
        "pending_unchanged": plan.pending_unchanged,
        "blocked": plan.blocked,
        "unresolved": plan.unresolved,
        "other_pending": plan.other_pending,
        "to_send": plan.to_send,
        "expiring": sendable.expiring,
        "held_back": held_back,
        "changed_examples": list(plan.changed_examples),
        "conflict_examples": list(plan.conflict_examples),
        "expiring_examples": sendable.expiring_examples,
        "batches": sorted(b or "" for b in sendable.batches),
        "first_payload": json.loads(sendable.first_payload) if sendable.first_payload else None,
    }


def run_plan(manifest: Path, options: Any, ledger: str | None, min_url_validity: dt.timedelta, as_json: bool) -> None:
    """Plan the load of `manifest` into the ledger (an empty scratch one if it does not exist), print it, and
    exit EXIT_HELD_BACK when a run would hold something back."""
    from uploader.ledger import Ledger, LedgerNotUpgraded, new_ledger_file, utcnow
    from uploader.load import plan_manifest
    from uploader.manifest import Manifest

    sendable = _Sendable(utcnow() + min_url_validity)
    with tempfile.TemporaryDirectory(prefix="uploader-plan-") as scratch:
        missing = new_ledger_file(ledger) is not None
        # A ledger that does not exist yet is planned against an empty one, made in a scratch folder; an older
        # one is not upgraded (plan writes nothing): LedgerNotUpgraded says so.
        try:
            led = Ledger.open(Path(scratch) / "empty.db" if missing else ledger, create=missing, upgrade=False)
        except LedgerNotUpgraded as exc:
            if not exc.empty:
                raise
            missing = True  # a database with no ledger in it yet (PostgreSQL)
            led = Ledger.open(Path(scratch) / "empty.db")
        try:
            plan = plan_manifest(led, Manifest(manifest, options), sendable)
        finally:
            led.close()
    held_back = plan.conflicts + plan.blocked + plan.unresolved + sendable.expiring
    if as_json:
        click.echo(json.dumps(plan_dict(plan, sendable, held_back), indent=2))
    else:
        _print(plan, sendable, held_back, missing, options)
    if held_back:
        sys.exit(EXIT_HELD_BACK)


def _print(plan: Any, sendable: _Sendable, held_back: int, missing: bool, options: Any) -> None:
    where = "a new ledger" if missing else "the ledger"
    click.echo(f"plan: {plan.manifest}, {plan.rows:,} rows, against {where} (nothing sent, nothing written)")
    click.echo(
        f"  new {plan.new:,} · unchanged {plan.unchanged:,} · changed {plan.changed:,} (sent again with the "
        f"new payload) · conflicts {plan.conflicts:,} (a job may exist: kept as they are)"
    )
    if plan.changed_examples:
        click.echo(f"  changed, e.g. {', '.join(plan.changed_examples)}")
    if plan.conflict_examples:
        click.echo(f"  conflicts, e.g. {', '.join(plan.conflict_examples)}")
    extra = f", and {plan.other_pending:,} pending rows of other manifests" if plan.other_pending else ""
    click.echo(
        f"  a run would send {plan.to_send - sendable.expiring:,} rows of this manifest"
        f" ({plan.pending_unchanged:,} of them loaded before and still pending){extra}"
    )
    if held_back:
        parts = [
            f"{n:,} {what}"
            for n, what in (
                (plan.conflicts, "in conflict"),
                (plan.blocked, "blocked by a failed attachment check"),
                (plan.unresolved, "in conflict or uncertain since an earlier run (`uploader status` says which)"),
                (sendable.expiring, "with a signed URL expiring too soon"),
            )
            if n
        ]
        click.echo(f"  held back: {', '.join(parts)}")
        for line in sendable.expiring_examples:
            click.echo(f"    {line}")
    batches = sorted(b or "" for b in sendable.batches)
    if batches == [""] or not batches:
        click.echo("  batch: the ledger's own batch for the project (made by the first run, reused by every rerun)")
    else:
        named = ", ".join(b or "(none: the ledger's own batch)" for b in batches)
        click.echo(f"  batch: {named}")
    if sendable.first_payload is not None:
        click.echo("  first payload it would send:")
        for line in json.dumps(json.loads(sendable.first_payload), indent=2, ensure_ascii=False).splitlines():
            click.echo(f"    {line}")
