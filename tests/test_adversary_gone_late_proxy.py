"""Adversarial checks of three behaviours added together, over real HTTP on loopback and a real SQLite ledger:

1. `uploader sync` recording a tracked row whose job the API no longer knows as `failed` (job_not_found): many
   at once (more than the sync's concurrency), in a default batch (the job that would tell its id, every job of
   it), across --watch rounds, in a ledger holding two projects, and what `retry` + `run` make of such a row
   afterwards (one job per reference_id at the sandbox; the new job's own result).
2. The resolver's `late_grace`: several rows whose jobs the server creates late, a stop during the grace wait
   (the rows stay uncertain and `reconcile` settles them), a job created after the grace (failed, then `retry`
   guarded by FS_0001), `late_grace=0`.
3. https:// proxy URLs: a proxy that closes during the TLS handshake, one that answers plain HTTP on its TLS
   port, an IPv6 literal proxy host, a 407 inside the TLS, NO_PROXY still bypassing; never a credential in an
   error's text.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hostile_api import BATCH, HostileApi, plain_answer
from tests.scripted_server import Peer, ok, run, serve
from tests.test_run import KEY, invoke, run_args, write_images
from tests.test_trust import rows
from tests.test_wire import ipv6_loopback
from tests.test_wire_proxy import (
    AUTH_LINE,
    BASIC,
    ESTABLISHED,
    SECRETS,
    Certs,
    certs,  # noqa: F401  (the module-scoped fixture)
    fetch,
    lookups,  # noqa: F401  (the autouse fake resolver)
    proxied,
    proxy_failure,
    proxy_url,
    trap,
    tunnelled_url,
    tunnelling,
)
from uploader.cli.commands import EXIT_SOME_FAILED
from uploader.ledger import Ledger
from uploader.manifest import ManifestOptions
from uploader.sandbox import Sandbox, SandboxConfig
from uploader.send import RunOptions, run_upload

# -- helpers ---------------------------------------------------------------------------------------------------


def _sync_json(ledger: Path, base_url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    said = invoke("sync", "--ledger", str(ledger), "--base-url", base_url, "--json", *extra)
    return said.exit_code, json.loads(said.stdout)


def _delete(box: Sandbox, job_id: str) -> None:
    assert httpx.delete(f"{box.base_url}/_sandbox/jobs/{job_id}").status_code == 200


def _assert_gone(row: dict[str, Any], old_job: str) -> None:
    """What `record_gone` must leave: failed, job_not_found, no job_id nor origin, the old job in the message,
    the row's own payload among the sends (it created that job)."""
    assert (row["status"], row["error_code"], row["job_id"], row["origin"]) == (
        "failed",
        "job_not_found",
        None,
        None,
    ), row
    assert old_job in row["error_message"]
    assert row["body_hash"] in (row["sent_hashes"] or "").split()


# -- 1. sync: jobs the API no longer knows ----------------------------------------------------------------------


def test_more_gone_jobs_than_the_sync_concurrency_are_all_recorded_and_resent_once(tmp_path: Path) -> None:
    """20 of 40 jobs deleted at the platform: more than one round of the fallback's 16 concurrent reads (the
    rows a listing did not show are read 16 at a time, each round's gone rows recorded after it). Every gone row
    is recorded failed/job_not_found, none is left succeeded with a dead job_id, no result file is written for
    them (--results), the count and the examples in --json agree, exit 3. The next sync reads no job on its own
    (exit 0). `retry --error-code job_not_found` then `run` create each gone job once again: the sandbox never
    holds two jobs for one reference_id."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = tmp_path / "l.db"
        sent = invoke(*run_args(write_images(tmp_path / "m.csv", 40), ledger, box))
        assert sent.exit_code == 0, sent.output
        before = rows(ledger)
        gone = {ref: before[ref]["job_id"] for ref in sorted(before)[::2]}
        for job in gone.values():
            _delete(box, job)
        results = tmp_path / "res"
        code, doc = _sync_json(ledger, box.base_url, "--results", str(results))
        assert code == EXIT_SOME_FAILED, doc
        assert doc["jobs_not_found"] == 20 and doc["tracked"] == 20 and doc["final"] == 20, doc
        assert {(e["reference_id"], e["job_id"]) for e in doc["jobs_not_found_examples"]} <= set(gone.items())
        assert doc["results_fetched"] == 20
        after = rows(ledger)
        for ref, job in gone.items():
            _assert_gone(after[ref], job)
        assert {r["status"] for ref, r in after.items() if ref not in gone} == {"succeeded"}
        assert sorted(p.name for p in results.iterdir()) == sorted(f"{r}.json" for r in after if r not in gone)
        code, doc = _sync_json(ledger, box.base_url, "--results", str(results))
        assert code == 0 and doc["jobs_not_found"] == 0 and doc["job_requests"] == 0, doc
        assert invoke("retry", "--ledger", str(ledger), "--error-code", "job_not_found").exit_code == 0
        again = invoke(*run_args(None, ledger, box))
        assert again.exit_code == 0, again.output
        final = rows(ledger)
        assert all(final[ref]["status"] == "succeeded" and final[ref]["job_id"] != job for ref, job in gone.items())
        stats = box.stats()
        assert stats["jobs_created_per_reference_id_max"] == 1, stats
        assert len({r["job_id"] for r in final.values()}) == 40


@pytest.mark.parametrize(("sent", "deleted"), [(1, 1), (4, 4), (5, 4)], ids=["only job", "every job", "all but one"])
def test_gone_jobs_of_a_default_batch_beyond_the_probes(tmp_path: Path, sent: int, deleted: int) -> None:
    """Default batch (its id learnt from a GET of one of its jobs, up to DEFAULT_BATCH_PROBES = 3 jobs asked):
    its only job gone, every job gone (more than the probes), or all but one gone. The probes that meet gone jobs
    record them; the rest are read on their own (GET job): every gone row recorded failed, the surviving one
    given its platform status, exit 3; the next sync has nothing left to read on its own."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = tmp_path / "l.db"
        done = invoke(*run_args(write_images(tmp_path / "m.csv", sent), ledger, box, "--default-batch"))
        assert done.exit_code == 0, done.output
        before = rows(ledger)
        gone = {ref: before[ref]["job_id"] for ref in sorted(before)[:deleted]}
        for job in gone.values():
            _delete(box, job)
        code, doc = _sync_json(ledger, box.base_url)
        assert code == EXIT_SOME_FAILED, doc
        assert doc["jobs_not_found"] == deleted and doc["tracked"] == sent - deleted, doc
        after = rows(ledger)
        for ref, job in gone.items():
            _assert_gone(after[ref], job)
        for ref in set(after) - set(gone):
            assert (after[ref]["status"], after[ref]["platform_status"]) == ("succeeded", "completed")
        code, doc = _sync_json(ledger, box.base_url)
        assert code == 0 and doc["jobs_not_found"] == 0 and doc["tracked"] == sent - deleted, doc
        assert doc["job_requests"] <= 1, doc  # at most the survivor, read to learn the default batch


def test_watch_rounds_each_record_their_gone_jobs_and_the_report_keeps_them_all(tmp_path: Path) -> None:
    """`sync --watch` (sync_ledger(watch=...)): a job gone before the first round, another deleted between the
    rounds (while the others are not final yet, so a second round comes). Each round records its own; the last
    report names both (`not_found` keeps every round's); the watch ends once the rest are final."""
    from uploader.send import sync_ledger

    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=3600)) as box:
        ledger = tmp_path / "l.db"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 4), ledger, box)).exit_code == 0
        jobs = {ref: r["job_id"] for ref, r in rows(ledger).items()}
        _delete(box, jobs["img-00000"])
        rounds: list[list[tuple[str, str]]] = []

        def between(report: Any) -> None:
            rounds.append(list(report.not_found))
            if len(rounds) == 1:
                _delete(box, jobs["img-00001"])
                box.configure(complete_after_s=0)

        led = Ledger.open(str(ledger))
        try:
            report = sync_ledger(led, base_url=box.base_url, api_key=KEY, watch=0.05, on_round=between)
        finally:
            led.close()
        assert rounds[0] == [("img-00000", jobs["img-00000"])]
        assert len(rounds) == 2 and report.nothing_to_wait_for
        assert sorted(report.not_found) == sorted((r, jobs[r]) for r in ("img-00000", "img-00001"))
        after = rows(ledger)
        for ref in ("img-00000", "img-00001"):
            _assert_gone(after[ref], jobs[ref])
        assert {after[r]["platform_status"] for r in ("img-00002", "img-00003")} == {"completed"}


def test_two_projects_sharing_reference_ids_only_the_gone_one_is_recorded(tmp_path: Path) -> None:
    """One ledger, two projects with the same reference_ids; one job of project `proj` deleted. Only that row is
    recorded failed (the other project's row of the same reference_id keeps its job); `retry` + `run` create
    it again in `proj` only: one job per (project, reference_id) at the sandbox."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = tmp_path / "l.db"
        manifest = write_images(tmp_path / "m.csv", 3)
        assert invoke(*run_args(manifest, ledger, box)).exit_code == 0
        other = ["run", str(manifest), "--project-id", "other", "--work-flow-id", "wf", "--ledger", str(ledger)]
        assert invoke(*other, "--base-url", box.base_url, "--quiet").exit_code == 0
        led = Ledger.open(str(ledger))
        try:
            by_project = {(r["project_id"], r["reference_id"]): r for r in led.export_rows()}
        finally:
            led.close()
        assert len(by_project) == 6
        victim = by_project[("proj", "img-00001")]["job_id"]
        _delete(box, victim)
        code, doc = _sync_json(ledger, box.base_url)
        assert code == EXIT_SOME_FAILED and doc["jobs_not_found"] == 1 and doc["tracked"] == 5, doc
        assert doc["jobs_not_found_examples"] == [{"reference_id": "img-00001", "job_id": victim}]
        led = Ledger.open(str(ledger))
        try:
            now = {(r["project_id"], r["reference_id"]): r for r in led.export_rows()}
        finally:
            led.close()
        assert (now[("proj", "img-00001")]["status"], now[("proj", "img-00001")]["job_id"]) == ("failed", None)
        assert now[("other", "img-00001")]["job_id"] == by_project[("other", "img-00001")]["job_id"]
        assert now[("other", "img-00001")]["status"] == "succeeded"
        assert invoke("retry", "--ledger", str(ledger), "--error-code", "job_not_found").exit_code == 0
        assert invoke(*run_args(None, ledger, box)).exit_code == 0
        assert invoke(*other, "--base-url", box.base_url, "--quiet").exit_code == 0
        assert box.stats()["jobs_created_per_reference_id_max"] == 1
        code, doc = _sync_json(ledger, box.base_url)
        assert code == 0 and doc["tracked"] == 6 and doc["jobs_not_found"] == 0, doc


def test_a_gone_job_sent_again_gets_its_new_jobs_result_not_the_deleted_ones(tmp_path: Path) -> None:
    """A job completed and its result fetched; then deleted at the platform. Sync records the row failed
    (job_not_found); `retry --error-code job_not_found` and `run` create a new job for it. A later sync must fetch
    the new job's result: the row's result (and its file) must be the new job's, not the deleted job's. (Found
    failing: record_gone kept the deleted job's platform status and result, so the new job counted as final with
    its result fetched; and a file left at the result's name is taken as a killed sync's download of the new
    job's.) The gone row names no status or result; the deleted job's file is set aside beside it, named in the
    row's message, and nothing of it is lost."""
    with Sandbox(SandboxConfig(api_key=KEY, complete_after_s=0)) as box:
        ledger = tmp_path / "l.db"
        results = tmp_path / "res"
        assert invoke(*run_args(write_images(tmp_path / "m.csv", 2), ledger, box)).exit_code == 0
        code, doc = _sync_json(ledger, box.base_url, "--results", str(results))
        assert code == 0 and doc["results_fetched"] == 2, doc
        old = rows(ledger)["img-00001"]["job_id"]
        assert json.loads((results / "img-00001.json").read_text())["job_id"] == old
        _delete(box, old)
        code, doc = _sync_json(ledger, box.base_url, "--results", str(results))
        assert code == EXIT_SOME_FAILED and doc["jobs_not_found"] == 1, doc
        lost = rows(ledger)["img-00001"]
        assert (lost["platform_status"], lost["result_path"], lost["result_sha256"]) == (None, None, None)
        aside = results / f"img-00001+gone-{old}.json"
        assert f"its last result was set aside as {aside}" in lost["error_message"]
        assert json.loads(aside.read_text())["job_id"] == old and not (results / "img-00001.json").exists()
        assert invoke("retry", "--ledger", str(ledger), "--error-code", "job_not_found").exit_code == 0
        assert invoke(*run_args(None, ledger, box)).exit_code == 0
        new = rows(ledger)["img-00001"]["job_id"]
        assert new not in (None, old)
        code, doc = _sync_json(ledger, box.base_url, "--results", str(results))
        assert code == 0, doc
        row = rows(ledger)["img-00001"]
        assert row["result_path"] is not None
        assert json.loads(Path(row["result_path"]).read_text())["job_id"] == new, "the deleted job's result kept"


# -- 2. the resolver's grace for a last attempt ---------------------------------------------------------------


def _late_creations(api: HostileApi, refs: set[str], delay: float | None, timers: list[threading.Timer]) -> Any:
    """An intercept: the first creation of each of `refs` is answered at once with an answer naming another
    reference_id (the row goes uncertain), and the server creates that row's job `delay` seconds later (never
    with None)."""
    answered: set[str] = set()

    def intercept(method: str, path: str, count: int) -> tuple[int, dict[str, str], bytes] | None:
        if method != "POST" or not path.endswith("/jobs"):
            return None
        with api.lock:
            pending = sorted(refs - answered - set(api.jobs))
            if not pending:
                return None
            ref = pending[0]
            answered.add(ref)
        if delay is not None:
            timer = threading.Timer(delay, api.create, [{"reference_id": ref}])
            timer.start()
            timers.append(timer)
        return 200, {"Content-Type": "application/json"}, plain_answer("not-a-row", f"job-of-nobody-{ref}")

    return intercept


def _run(tmp_path: Path, api: HostileApi, n: int, grace: float, stop: Any = None) -> Any:
    led = Ledger.open(tmp_path / "l.db")
    try:
        return run_upload(
            led,
            write_images(tmp_path / "m.csv", n),
            ManifestOptions(project_id="proj", work_flow_id="wf", batch_id=BATCH),
            base_url=api.base_url,
            api_key=KEY,
            run_options=RunOptions(concurrency=1, max_attempts=1, late_grace=grace),
            handle_signals=False,
            stop=stop,
        )
    finally:
        led.close()


def test_several_last_attempts_created_late_are_all_recovered_after_one_grace(tmp_path: Path) -> None:
    """The POSTs are serialised by the intercept ordering: the first three rows (of five) get the answer of
    another reference_id, their jobs created 0.4 s later; one attempt each. One extra listing after the grace
    finds all three: succeeded, recovered, one job each; the run waited one grace, not one per row."""
    timers: list[threading.Timer] = []
    late = {"img-00000", "img-00001", "img-00002"}
    with HostileApi(KEY) as api:
        api.intercept = _late_creations(api, late, 0.4, timers)
        started = time.monotonic()
        summary = _run(tmp_path, api, 5, grace=1.0)
        elapsed = time.monotonic() - started
        for timer in timers:
            timer.join()
        got = rows(tmp_path / "l.db")
        assert {k: (r["status"], r["job_id"]) for k, r in got.items()} == {
            k: ("succeeded", api.jobs[k]) for k in got
        }, summary
        assert {got[k]["origin"] for k in late} == {"recovered"}
        assert set(api.created.values()) == {1} and len(api.created) == 5
        assert elapsed < 2.5, elapsed


def test_a_stop_during_the_grace_wait_leaves_the_rows_uncertain_and_reconcile_settles_them(tmp_path: Path) -> None:
    """The run waits `late_grace` (3 s) before listing again; a gentle stop 1 s in ends the wait at once. The
    late row is left uncertain (not failed: nothing said its job was not created); its job then exists, and
    `uploader reconcile` finds it: succeeded, recovered, the only job for that reference_id."""
    from uploader.send.submit import StopFlag

    timers: list[threading.Timer] = []
    stop = StopFlag()
    with HostileApi(KEY) as api:
        api.intercept = _late_creations(api, {"img-00000"}, 0.3, timers)
        tripper = threading.Timer(1.0, stop.trip)
        tripper.start()
        started = time.monotonic()
        try:
            _run(tmp_path, api, 3, grace=3.0, stop=stop)
        finally:
            tripper.cancel()
        elapsed = time.monotonic() - started
        timers[0].join()
        assert elapsed < 2.5, elapsed  # the stop ended the grace wait
        got = rows(tmp_path / "l.db")
        assert got["img-00000"]["status"] == "uncertain" and got["img-00000"]["job_id"] is None, got["img-00000"]
        assert {got[k]["status"] for k in ("img-00001", "img-00002")} == {"succeeded"}
        said = invoke("reconcile", "--ledger", str(tmp_path / "l.db"), "--base-url", api.base_url)
        assert said.exit_code == 0, said.output
        row = rows(tmp_path / "l.db")["img-00000"]
        assert (row["status"], row["job_id"], row["origin"]) == ("succeeded", api.jobs["img-00000"], "recovered")
        assert set(api.created.values()) == {1}


@pytest.mark.parametrize("grace", [0.0, 0.3])
def test_a_job_created_after_the_grace_ends_failed_and_retry_does_not_duplicate_it(
    tmp_path: Path, grace: float
) -> None:
    """The late job is created 1.2 s after the answer, past the grace (0: none at all, the behaviour before the
    grace). The run fails the row (mismatched_answer), does not wait more than the grace. Once the job exists,
    `retry` + `run` send it again: the API refuses the twin with FS_0001 and the listing finds the job, so the
    row ends succeeded with that job and the API never holds two for it."""
    timers: list[threading.Timer] = []
    with HostileApi(KEY) as api:
        api.intercept = _late_creations(api, {"img-00000"}, 1.2, timers)
        started = time.monotonic()
        _run(tmp_path, api, 3, grace=grace)
        elapsed = time.monotonic() - started
        got = rows(tmp_path / "l.db")
        assert (got["img-00000"]["status"], got["img-00000"]["error_code"]) == ("failed", "mismatched_answer")
        assert elapsed < 1.1 + grace, elapsed
        timers[0].join()
        api.intercept = None
        ledger = tmp_path / "l.db"
        assert invoke("retry", "--ledger", str(ledger), "--error-code", "mismatched_answer").exit_code == 0
        again = invoke(*run_args_hostile(ledger, api))
        assert again.exit_code == 0, again.output
        row = rows(ledger)["img-00000"]
        assert (row["status"], row["job_id"]) == ("succeeded", api.jobs["img-00000"]), row
        assert api.created == dict.fromkeys(("img-00000", "img-00001", "img-00002"), 1)
        assert api.requests["exists"] >= 1


def run_args_hostile(ledger: Path, api: HostileApi) -> list[str]:
    common = ["--project-id", "proj", "--work-flow-id", "wf", "--ledger", str(ledger), "--batch-id", BATCH]
    return ["run", *common, "--base-url", api.base_url, "--quiet"]


# -- 3. https:// proxies ---------------------------------------------------------------------------------------


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text
    assert "proxy-authorization" not in text.lower(), text


def test_an_https_proxy_that_closes_during_the_tls_handshake(certs: Certs) -> None:  # noqa: F811
    """The proxy accepts the connection and closes it when the ClientHello arrives: a failure naming the proxy
    (no hang, no credentials, the slot given back), and the credentials never sent in clear."""
    received: list[bytes] = []

    async def hang_up(peer: Peer) -> None:
        received.append(await peer.reader.read(5))

    async def main() -> None:
        async with serve(hang_up) as proxy:  # a plain socket: TLS never completes
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            error = await proxy_failure(wire, tunnelled_url(), ("tls_error", "connect_error"))
            assert f"127.0.0.1:{proxy.port}" in str(error)
            await wire.aclose()

    run(main())
    assert received and received[0][:1] == b"\x16"  # a TLS handshake record, not a CONNECT


def test_an_https_proxy_url_pointing_at_a_plain_http_proxy_sends_nothing_in_clear(certs: Certs) -> None:  # noqa: F811
    """HTTPS_PROXY=https://… while the proxy speaks plain HTTP (it answers the ClientHello with a 400): a TLS
    failure naming the proxy; what reached the proxy is the handshake only, never the CONNECT nor its Basic
    credentials."""
    seen: list[bytes] = []

    async def plain(peer: Peer) -> None:
        seen.append(await peer.reader.read(4096))
        await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    async def main() -> None:
        async with serve(plain) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            error = await proxy_failure(wire, tunnelled_url(), ("tls_error", "connect_error"))
            assert f"the proxy 127.0.0.1:{proxy.port}" in str(error)
            await wire.aclose()

    run(main())
    assert seen and seen[0][:1] == b"\x16"
    assert b"CONNECT" not in seen[0] and BASIC.encode() not in seen[0]


def test_a_407_from_an_https_proxy_is_a_connect_error_without_credentials(certs: Certs) -> None:  # noqa: F811
    """The CONNECT (with credentials) goes inside TLS with the proxy, which refuses it with 407: connect_error
    saying authentication, no form of the credentials in the text."""

    async def refuse(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await peer.until_closed()

    async def main() -> None:
        async with serve(refuse, tls=certs.proxy) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            error = await proxy_failure(wire, tunnelled_url(), "connect_error")
            assert "407" in str(error) and "authentication" in str(error)
            ((_, connect),) = proxy.requests
            assert AUTH_LINE in connect
            await wire.aclose()

    run(main())


def test_an_https_proxy_at_an_ipv6_literal(certs: Certs) -> None:  # noqa: F811
    """HTTPS_PROXY=https://user:pass@[::1]:port: TLS with the proxy checked against its IP address, the CONNECT
    inside it, the tunnel's TLS inside that."""
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert("::1").configure_cert(context)

    async def main() -> None:
        async with serve(tunnelling(certs.server, ok(b"v6")), host="::1", tls=context) as proxy:
            url = proxy_url(proxy, credentials=True, scheme="https").replace("127.0.0.1", "[::1]")
            wire = proxied({"https": url}, certs.client)
            assert (await fetch(wire, tunnelled_url("/v1/six")))[2] == b"v6"
            (_, connect), (_, inside) = proxy.requests
            assert connect.startswith(b"CONNECT api.example.test:8443 HTTP/1.1\r\n") and AUTH_LINE in connect
            assert inside.startswith(b"GET /v1/six HTTP/1.1\r\n") and b"proxy-authorization" not in inside.lower()
            await wire.aclose()
            async with serve(tunnelling(certs.server), host="::1", tls=certs.wrong_name) as bad:
                # a certificate for another name: the failure names the bracketed address
                other = proxied({"https": url.replace(str(proxy.port), str(bad.port))}, certs.client)
                error = await proxy_failure(other, tunnelled_url(), "tls_error")
                assert f"the proxy [::1]:{bad.port}" in str(error)
                await other.aclose()

    run(main())


def test_no_proxy_still_bypasses_an_https_proxy(certs: Certs) -> None:  # noqa: F811
    """NO_PROXY lists the host: an http URL goes directly to the origin though an https:// proxy is set for
    both schemes (the proxy is never even connected to); another host goes through it over TLS."""

    async def main() -> None:
        async with (
            serve(trap, tls=certs.proxy) as unused,
            serve(lambda peer: _answer_all(peer, b"origin")) as origin,
        ):
            url = proxy_url(unused, credentials=True, scheme="https")
            wire = proxied({"http": url, "https": url, "no": "internal.example"}, certs.client)
            assert (await fetch(wire, f"http://internal.example:{origin.port}/n"))[2] == b"origin"
            assert unused.connections == 0
            assert origin.requests[0][1].startswith(b"GET /n HTTP/1.1\r\nhost: internal.example:")
            await wire.aclose()
        async with serve(lambda peer: _answer_all(peer, b"via"), tls=certs.proxy) as used:
            url = proxy_url(used, scheme="https")
            wire = proxied({"http": url, "no": "internal.example"}, certs.client)
            assert (await fetch(wire, "http://plain.example.test:8080/p"))[2] == b"via"
            assert used.requests[0][1].startswith(b"GET http://plain.example.test:8080/p HTTP/1.1\r\n")
            await wire.aclose()

    run(main())


async def _answer_all(peer: Peer, body: bytes) -> None:
    async for _ in peer.requests():
        await peer.send(ok(body))


def test_established_then_no_tls_inside_an_https_proxy_is_a_failure_without_credentials(
    certs: Certs,  # noqa: F811
) -> None:
    """The https:// proxy answers the CONNECT and then closes instead of carrying the tunnel's TLS: an error
    (not a hang), naming the target and the proxy, no credentials in it."""

    async def established_then_close(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(ESTABLISHED)

    async def main() -> None:
        async with serve(established_then_close, tls=certs.proxy) as proxy:
            wire = proxied({"https": proxy_url(proxy, credentials=True, scheme="https")}, certs.client)
            error = await proxy_failure(wire, tunnelled_url(), ("tls_error", "connect_error"))
            _no_secret(str(error))
            assert "api.example.test:8443" in str(error) and f"127.0.0.1:{proxy.port}" in str(error)
            await wire.aclose()

    run(main())
