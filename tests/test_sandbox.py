"""The sandbox must be a faithful, fast and repeatable stand-in for the Playment job API (docs/api.md).

Everything here is real HTTP over loopback (httpx, sync) against a `Sandbox` running in a thread, except
the few pure-function tables at the top.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import uploader.sandbox
from uploader.sandbox import DEFAULT_BATCH_NAME, Sandbox, SandboxConfig, default_batch_id
from uploader.sandbox.faults import FaultInjector, TokenBucket
from uploader.sandbox.state import SandboxState, decode_page_token, encode_page_token

PROJECT = "proj-1"
JOBS = f"/v1/projects/{PROJECT}/jobs"
BATCH = f"/v1/projects/{PROJECT}/batch"
IMAGE = {"image_url": "https://cdn.example.com/a.jpg"}


def job(ref: str = "ref-1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"reference_id": ref, "work_flow_id": "wf-1", "data": dict(IMAGE)}
    body.update(extra)
    return body


def client_for(sb: Sandbox, timeout: float = 5.0, key: str | None = None) -> httpx.Client:
    headers = {"x-api-key": key if key is not None else sb.api_key}
    return httpx.Client(base_url=sb.base_url, headers=headers, trust_env=False, timeout=timeout)


def assert_error(response: httpx.Response, code: str, status: int = 400) -> dict[str, Any]:
    """The documented failure envelope, exactly: {"error": {code, message, errors: []}, "success": false}."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "success"} and body["success"] is False
    assert set(body["error"]) == {"code", "message", "errors"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["errors"], list)
    error: dict[str, Any] = body["error"]
    return error


def assert_ok(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"data", "success"} and body["success"] is True
    data: dict[str, Any] = body["data"]
    return data


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxConfig(seed=1)) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with client_for(sandbox) as c:
        yield c


# -- pure pieces -----------------------------------------------------------------------------------
def test_public_api_is_exported() -> None:
    assert set(uploader.sandbox.__all__) == {
        "DEFAULT_API_KEY",
        "DEFAULT_BATCH_NAME",
        "Sandbox",
        "SandboxConfig",
        "default_batch_id",
        "serve",
    }
    for name in uploader.sandbox.__all__:
        assert getattr(uploader.sandbox, name) is not None


def test_default_batch_id_is_documented_uuid5() -> None:
    assert default_batch_id("p") == str(uuid.uuid5(uuid.NAMESPACE_URL, "sandbox-default-batch/p"))
    assert default_batch_id("p") != default_batch_id("q")


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"error_rate": 0.6, "html_error_rate": 0.6},
        {"drop_rate": 0.6, "slow_rate": 0.6},
        {"rate_limit": 0},
        {"retry_after_s": 0},
        {"page_size": 0},
        {"latency_ms": -1},
        {"api_key": ""},
    ],
)
def test_config_refuses_meaningless_settings(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SandboxConfig(**changes)


def test_config_hides_key_and_normalises_sets(tmp_path: Path) -> None:
    config = SandboxConfig(api_key="s3cret-key", projects=["a"], state_file=str(tmp_path / "s"))  # type: ignore[arg-type]
    assert "s3cret-key" not in repr(config)
    assert config.projects == frozenset({"a"}) and isinstance(config.state_file, Path)


def test_page_tokens_are_opaque_and_checked() -> None:
    assert decode_page_token(encode_page_token(200)) == 200
    assert encode_page_token(200) != "200"
    for bad in ("200", "!!", encode_page_token(0)[:-1] + "@"):
        with pytest.raises(Exception, match="GE_0001"):
            decode_page_token(bad)


def test_token_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True


def test_fault_decisions_repeat_for_a_seed() -> None:
    config = SandboxConfig(seed=42, error_rate=0.3, html_error_rate=0.2, drop_rate=0.1, jitter_ms=5)
    runs = []
    for _ in range(2):
        injector = FaultInjector(config, clock=lambda: 0.0)
        runs.append([injector.decide() for _ in range(200)])
    assert runs[0] == runs[1]
    assert all(0 <= d.delay_s <= 0.005 for d in runs[0]) and len({d.delay_s for d in runs[0]}) > 100
    kinds = [d.refuse for d in runs[0]]
    assert 40 < kinds.count("error") < 80 and 20 < kinds.count("html") < 60


# -- job creation ------------------------------------------------------------------------------------
def test_create_job_success_envelope(client: httpx.Client) -> None:
    data = assert_ok(client.post(JOBS, json=job("r1")))
    assert set(data) == {"job_id", "reference_id", "work_flow_id"}
    assert uuid.UUID(data["job_id"]).version == 4
    assert (data["reference_id"], data["work_flow_id"]) == ("r1", "wf-1")


@pytest.mark.parametrize(
    "body",
    [
        job("v", data={"video_data": {"frames": [{"frame_id": "f1", "src": "http://x/1.jpg"}]}}),
        job("s", data={"sensor_data": {"frames": [], "sensor_meta": []}}),
        job("s2", data={"sensor_data": {"sensor_meta": [{"id": "lidar"}]}}),
        job("m", data={**IMAGE, "metadata": {"any": ["thing"]}, "maker_response": {}}),
        job("p1", priority_weight=1),
        job("p10", priority_weight=10),
        job("e", batch_id=""),
    ],
)
def test_valid_bodies_are_accepted(client: httpx.Client, body: dict[str, Any]) -> None:
    assert_ok(client.post(JOBS, json=body))


NO_REF = {"work_flow_id": "wf", "data": IMAGE}
FRAME = {"frame_id": "f1", "src": "https://x/1.jpg"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "code", "validation"),
    [
        (b"{not json", "GE_0001", None),
        (b"[1, 2]", "GE_0001", None),
        (b"", "GE_0001", None),
        (NO_REF, "FS_0002", None),
        ({**NO_REF, "reference_id": ""}, "FS_0002", None),
        ({"reference_id": "r"}, "FS_0005", None),  # order: work_flow_id before data
        ({"reference_id": "r", "work_flow_id": "wf"}, "FS_0004", None),
        (job(data={}), "FS_0004", None),
        (job(batch_id="not-a-uuid", data={}), "FS_0004", None),  # order: data before batch_id
        (job(batch_id="not-a-uuid"), "GE_0001", None),
        (job(batch_id=str(uuid.uuid4())), "GE_0001", None),
        (job(batch_id=default_batch_id("other-project")), "GE_0001", None),
        (job(batch_id=str(uuid.uuid4()), data={"x": 1}), "GE_0001", None),  # order: batch_id before data
        (job(data={"metadata": {}}), "FS_0003", {"FIELD_NOT_FOUND"}),
        (job(data="abc"), "FS_0003", {"WRONG_DATA_TYPE"}),
        (job(data={"image_url": "ftp://x/a.jpg"}), "FS_0003", {"INVALID_IMAGE_LINK"}),
        (job(data={"image_url": "not a url"}), "FS_0003", {"INVALID_IMAGE_LINK"}),
        (job(data={"image_url": ""}), "FS_0003", {"MANDATORY_FIELD_EMPTY"}),
        (job(data={"image_url": 7}), "FS_0003", {"WRONG_DATA_TYPE"}),
        (job(data={"video_data": {}}), "FS_0003", {"FIELD_NOT_FOUND"}),
        (job(data={"video_data": {"frames": []}}), "FS_0003", {"MANDATORY_FIELD_EMPTY"}),
        (job(data={"video_data": {"frames": "f"}}), "FS_0003", {"WRONG_DATA_TYPE"}),
        (job(data={"video_data": {"frames": [{"frame_id": "f1"}]}}), "FS_0003", {"FIELD_NOT_FOUND"}),
        (job(data={"video_data": {"frames": [{"src": "https://x/1"}]}}), "FS_0003", {"FIELD_NOT_FOUND"}),
        (job(data={"video_data": {"frames": [FRAME, FRAME]}}), "FS_0003", {"DUPLICATE_FRAME_ID"}),
        (job(data={"sensor_data": []}), "FS_0003", {"WRONG_DATA_TYPE"}),
        (job(data={"image_url": "x"}, priority_weight=99), "FS_0003", {"INVALID_IMAGE_LINK"}),  # order
        (job(priority_weight=0), "FS_00012", None),
        (job(priority_weight=11), "FS_00012", None),
        (job(priority_weight="5"), "FS_00012", None),
        (job(priority_weight=5.0), "FS_00012", None),
        (job(priority_weight=True), "FS_00012", None),
    ],
)
def test_invalid_bodies_are_refused_in_documented_order(
    client: httpx.Client, body: Any, code: str, validation: set[str] | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    error = assert_error(client.post(JOBS, content=content, headers={"content-type": "application/json"}), code)
    if validation is None:
        assert error["errors"] == []
    else:
        assert error["message"] == "Invalid data passed"
        assert {e["validation_code"] for e in error["errors"]} == validation
        for entry in error["errors"]:
            assert set(entry) == {"validation_code", "meta_data"}
            assert entry["meta_data"]["fields"] and all(isinstance(f, str) for f in entry["meta_data"]["fields"])
    assert client.get("/_sandbox/jobs").json() == {"jobs": []}


def test_duplicate_reference_id_is_fs_0001_per_project(client: httpx.Client) -> None:
    assert_ok(client.post(JOBS, json=job("dup")))
    error = assert_error(client.post(JOBS, json=job("dup", priority_weight=3)), "FS_0001")
    assert error["message"] == "reference_id already exists"
    # the check comes after validation: an invalid duplicate is refused for its data first
    assert_error(client.post(JOBS, json=job("dup", priority_weight=0)), "FS_00012")
    assert_ok(client.post("/v1/projects/other/jobs", json=job("dup")))
    stats = client.get("/_sandbox/stats").json()
    assert stats["fs_0001_refusals"] == 1
    # counted per project, like the uniqueness rule: the other project's "dup" is not a resend
    assert stats["max_requests_per_reference_id"] == 3 and stats["jobs_created_per_reference_id_max"] == 1


@pytest.mark.slow
def test_concurrent_duplicates_create_exactly_one_job(sandbox: Sandbox) -> None:
    def send(_: int) -> int:
        with client_for(sandbox) as c:
            return c.post(JOBS, json=job("race")).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(32)))
    assert statuses.count(200) == 1 and statuses.count(400) == 31
    stats = sandbox.stats()
    assert stats["jobs_created_per_reference_id_max"] == 1 and stats["max_requests_per_reference_id"] == 32


# -- batches, jobs, listing --------------------------------------------------------------------------
def test_batches_and_get_job(client: httpx.Client) -> None:
    batch_id = assert_ok(client.post(BATCH, json={"name": "b1", "description": "first"}))["batch_id"]
    assert uuid.UUID(batch_id)
    assert_error(client.post(BATCH, json={"name": "b1", "description": "again"}), "BATCH_CREATION")
    assert_error(client.post(BATCH, json={"name": DEFAULT_BATCH_NAME}), "BATCH_CREATION")
    assert_error(client.post(BATCH, json={"description": "no name"}), "GE_0002")
    assert_error(client.post(BATCH, content=b"nope"), "GE_0001")
    job_id = assert_ok(client.post(JOBS, json=job("in-b1", batch_id=batch_id, priority_weight=7)))["job_id"]
    assert assert_ok(client.get(f"{JOBS}/{job_id}")) == {
        "project_id": PROJECT,
        "reference_id": "in-b1",
        "job_id": job_id,
        "batch_id": batch_id,
        "status": "created",
        "work_flow_id": "wf-1",
        "priority_weight": 7,
        "tag": None,
        "result": None,
    }
    listing = assert_ok(client.get(f"{BATCH}/{batch_id}"))
    assert listing == {
        "id": batch_id,
        "project_id": PROJECT,
        "name": "b1",
        "jobs": [{"id": job_id, "reference_id": "in-b1", "status": "created", "work_flow_id": "wf-1"}],
        "next_page_token": "",
    }


def test_default_batch_is_real_and_listable(client: httpx.Client) -> None:
    job_id = assert_ok(client.post(JOBS, json=job("d1")))["job_id"]
    got = assert_ok(client.get(f"{JOBS}/{job_id}"))
    assert got["batch_id"] == default_batch_id(PROJECT) and got["priority_weight"] == 5
    listing = assert_ok(client.get(f"{BATCH}/{default_batch_id(PROJECT)}"))
    assert listing["name"] == DEFAULT_BATCH_NAME and [j["id"] for j in listing["jobs"]] == [job_id]
    # the default batch can also be named explicitly
    explicit = assert_ok(client.post(JOBS, json=job("d2", batch_id=default_batch_id(PROJECT))))["job_id"]
    assert assert_ok(client.get(f"{JOBS}/{explicit}"))["batch_id"] == default_batch_id(PROJECT)
    # a project never used still has an (empty) default batch
    empty = assert_ok(client.get(f"/v1/projects/fresh/batch/{default_batch_id('fresh')}"))
    assert empty["jobs"] == [] and empty["next_page_token"] == ""


def test_unknown_job_and_batch(client: httpx.Client) -> None:
    assert_error(client.get(f"{JOBS}/{uuid.uuid4()}"), "FS_0006")
    assert_error(client.get(f"{JOBS}/not-a-uuid"), "GE_0001")
    other = assert_ok(client.post("/v1/projects/other/jobs", json=job("o")))["job_id"]
    assert_error(client.get(f"{JOBS}/{other}"), "FS_0006")  # exists, but in another project
    assert_error(client.get(f"{BATCH}/{uuid.uuid4()}"), "GE_0001")
    assert_error(client.get(f"{BATCH}/xyz"), "GE_0001")
    assert_error(client.get(f"{BATCH}/{default_batch_id(PROJECT)}", params={"page_token": "bogus"}), "GE_0001")


def test_pagination_250_jobs_in_three_pages(client: httpx.Client) -> None:
    refs = [f"page-{i:03}" for i in range(250)]
    for ref in refs:
        assert_ok(client.post(JOBS, json=job(ref)))
    pages: list[list[dict[str, Any]]] = []
    tokens: list[str] = []
    token: str | None = None
    while token != "":
        params: dict[str, str] = {"page_token": token} if token else {}
        page = assert_ok(client.get(f"{BATCH}/{default_batch_id(PROJECT)}", params=params))
        pages.append(page["jobs"])
        token = page["next_page_token"]
        tokens.append(token)
        assert len(pages) <= 3
    assert [len(p) for p in pages] == [100, 100, 50]
    assert tokens[0] and tokens[1] and tokens[0] != tokens[1] and tokens[2] == ""
    assert [j["reference_id"] for p in pages for j in p] == refs  # creation order


def test_page_size_is_configurable() -> None:
    with Sandbox(SandboxConfig(page_size=2)) as sb, client_for(sb) as c:
        for i in range(5):
            assert_ok(c.post(JOBS, json=job(f"r{i}")))
        first = assert_ok(c.get(f"{BATCH}/{default_batch_id(PROJECT)}"))
        assert len(first["jobs"]) == 2 and first["next_page_token"]


# -- authentication, projects, paths -----------------------------------------------------------------
def test_auth_and_project_errors() -> None:
    config = SandboxConfig(api_key="k-123", projects=frozenset({"p", "no"}), forbidden_projects=frozenset({"no"}))
    with Sandbox(config) as sb, client_for(sb) as c:
        assert_ok(c.post("/v1/projects/p/jobs", json=job()))
        for key in ("wrong", ""):
            with client_for(sb, key=key) as bad:
                assert_error(bad.post("/v1/projects/p/jobs", json=job("x")), "auth-failure", 401)
                assert_error(bad.get(f"/v1/projects/p/batch/{default_batch_id('p')}"), "auth-failure", 401)
        anonymous = httpx.Client(base_url=sb.base_url, trust_env=False)
        assert_error(anonymous.post("/v1/projects/p/jobs", json=job("x")), "auth-failure", 401)
        assert anonymous.get("/_sandbox/stats").status_code == 200  # introspection needs no key
        anonymous.close()
        assert_error(c.post("/v1/projects/no/jobs", json=job("x")), "unauthorized", 403)
        assert_error(c.post("/v1/projects/elsewhere/jobs", json=job("x")), "resource_error", 404)
        assert_error(c.get("/v1/nothing/here"), "resource_error", 404)
        assert_error(c.put("/v1/projects/p/jobs", json=job("x")), "resource_error", 404)
        assert_error(c.get("/_sandbox/nothing"), "resource_error", 404)
        assert len(sb.jobs()) == 1


# -- faults ------------------------------------------------------------------------------------------
def test_error_rate_one_gives_only_500s_and_no_jobs() -> None:
    with Sandbox(SandboxConfig(error_rate=1.0, seed=3)) as sb, client_for(sb) as c:
        for i in range(10):
            assert_error(c.post(JOBS, json=job(f"e{i}")), "FS_0000", 500)
        # other endpoints stay reliable unless faults_on_all
        assert_ok(c.post(BATCH, json={"name": "fine"}))
        assert_ok(c.get(f"{BATCH}/{default_batch_id(PROJECT)}"))
        stats = sb.stats()
        assert sb.jobs() == [] and stats["faults"]["error"] == 10 and stats["requests_by_status"]["500"] == 10


def test_faults_on_all_reaches_every_endpoint() -> None:
    with Sandbox(SandboxConfig(error_rate=1.0, faults_on_all=True)) as sb, client_for(sb) as c:
        assert_error(c.post(BATCH, json={"name": "x"}), "FS_0000", 500)
        assert_error(c.get(f"{BATCH}/{default_batch_id(PROJECT)}"), "FS_0000", 500)
        assert c.get("/_sandbox/stats").status_code == 200  # introspection is never faulted


def test_html_502() -> None:
    with Sandbox(SandboxConfig(html_error_rate=1.0)) as sb, client_for(sb) as c:
        response = c.post(JOBS, json=job())
        assert response.status_code == 502
        assert response.headers["content-type"].startswith("text/html")
        assert response.text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
        assert sb.jobs() == [] and sb.stats()["faults"]["html"] == 1


def test_seeded_error_rate_is_repeatable() -> None:
    def statuses() -> list[int]:
        with Sandbox(SandboxConfig(error_rate=0.5, seed=11)) as sb, client_for(sb) as c:
            return [c.post(JOBS, json=job(f"s{i}")).status_code for i in range(40)]

    first = statuses()
    assert first == statuses()
    assert set(first) == {200, 500} and 10 < first.count(500) < 30


def test_drop_creates_the_job_but_never_answers() -> None:
    with Sandbox(SandboxConfig(drop_rate=1.0)) as sb, client_for(sb) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(JOBS, json=job("dropped"))
        assert [j["reference_id"] for j in sb.jobs()] == ["dropped"]
        sb.configure(drop_rate=0)
        # the naive retry meets FS_0001: the job already exists
        assert_error(c.post(JOBS, json=job("dropped")), "FS_0001")
        stats = sb.stats()
        assert stats["faults"]["drop"] == 1 and stats["requests_total"] == 2
        assert stats["requests_by_status"] == {"400": 1}  # the dropped request had no status
        assert stats["reference_ids_sent_more_than_once"] == ["dropped"]


def test_slow_reply_times_out_with_the_job_created() -> None:
    with Sandbox(SandboxConfig(slow_rate=1.0, slow_ms=2000)) as sb, client_for(sb, timeout=0.2) as c:
        started = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout):
            c.post(JOBS, json=job("slow"))
        assert time.perf_counter() - started < 1.5
        assert [j["reference_id"] for j in sb.jobs()] == ["slow"]
        assert sb.stats()["faults"]["slow"] == 1


def test_latency_delays_job_posts_only() -> None:
    with Sandbox(SandboxConfig(latency_ms=150, jitter_ms=50, seed=5)) as sb, client_for(sb) as c:
        started = time.perf_counter()
        assert_ok(c.post(JOBS, json=job()))
        assert 0.15 <= time.perf_counter() - started < 1.0
        started = time.perf_counter()
        assert_ok(c.get(f"{BATCH}/{default_batch_id(PROJECT)}"))
        assert time.perf_counter() - started < 0.15


def test_rate_limit_gives_429_with_retry_after() -> None:
    with Sandbox(SandboxConfig(rate_limit=5, retry_after_s=2)) as sb, client_for(sb) as c:
        responses = [c.post(JOBS, json=job(f"rl{i}")) for i in range(8)]
        assert responses[0].status_code == 200
        limited = [r for r in responses if r.status_code == 429]
        assert len(limited) >= 5
        for response in limited:
            assert response.headers["retry-after"] == "2"
            assert_error(response, "rate_limited", 429)
        assert len(sb.jobs()) == 8 - len(limited)
        assert sb.stats()["faults"]["rate_limited"] == len(limited)
        time.sleep(0.25)  # a token refills after 1/5 s
        assert_ok(c.post(JOBS, json=job("after-wait")))


def test_legacy_server() -> None:
    with Sandbox(SandboxConfig(legacy=True, api_key="old-key", forbidden_projects=frozenset({"f"}))) as sb:
        with client_for(sb) as c:
            assert_ok(c.post(JOBS, json=job("l1")))
            error = assert_error(c.post(JOBS, json=job("l1")), "FS_0001", status=200)
            assert error["message"] == "reference_id already exists"
            assert_error(c.post(JOBS, json={"reference_id": "x"}), "FS_0005", status=200)
            assert_error(c.post("/v1/projects/f/jobs", json=job("x")), "unauthorized", status=200)
            sb.configure(error_rate=1.0)
            assert_error(c.post(JOBS, json=job("l2")), "FS_0000", status=200)
            sb.configure(error_rate=0.0)
        with client_for(sb, key="bad") as bad:
            response = bad.post(JOBS, json=job("l3"))
            assert response.status_code == 401 and response.content == b""
        assert sb.stats()["requests_by_status"] == {"200": 5, "401": 1}


def test_configure_mid_run() -> None:
    with Sandbox() as sb, client_for(sb) as c:
        assert_ok(c.post(JOBS, json=job("c1")))
        sb.configure(error_rate=1.0)
        assert_error(c.post(JOBS, json=job("c2")), "FS_0000", 500)
        sb.configure(error_rate=0.0, api_key="rotated")
        assert_error(c.post(JOBS, json=job("c3")), "auth-failure", 401)
        assert sb.api_key == "rotated"
        with client_for(sb) as rotated:
            assert_ok(rotated.post(JOBS, json=job("c3")))
        with pytest.raises(TypeError):
            sb.configure(no_such_setting=1)
        with pytest.raises(ValueError):
            sb.configure(error_rate=2)
        with pytest.raises(ValueError):
            sb.configure(state_file=Path("x"))
        assert sb.config.error_rate == 0.0


# -- introspection -----------------------------------------------------------------------------------
def test_stats_and_jobs_documents() -> None:
    key = "very-secret-key-123"
    with Sandbox(SandboxConfig(api_key=key)) as sb, client_for(sb) as c:
        assert_ok(c.post(JOBS, json=job("a", priority_weight=2)))
        assert_ok(c.post(JOBS, json=job("b")))
        assert_error(c.post(JOBS, json=job("a")), "FS_0001")
        assert_error(c.post(JOBS, json=job("a")), "FS_0001")
        assert_error(c.post(JOBS, json=job("", data={})), "FS_0002")
        raw = c.get("/_sandbox/stats")
        assert key not in raw.text
        stats = raw.json()
        assert stats == sb.stats()
        assert stats["requests_by_status"] == {"200": 2, "400": 3}
        assert stats["requests_total"] == 5 and stats["jobs_created"] == 2 and stats["fs_0001_refusals"] == 2
        assert stats["faults"] == {"error": 0, "html": 0, "drop": 0, "rate_limited": 0, "slow": 0}
        assert stats["max_requests_per_reference_id"] == 3
        assert stats["reference_ids_sent_more_than_once"] == ["a"]
        assert stats["jobs_created_per_reference_id_max"] == 1
        jobs = c.get("/_sandbox/jobs").json()["jobs"]
        assert jobs == sb.jobs() and [j["reference_id"] for j in jobs] == ["a", "b"]
        assert set(jobs[0]) == {
            "project_id", "batch_id", "reference_id", "job_id", "work_flow_id", "priority_weight", "data"
        }  # fmt: skip
        assert jobs[0]["data"] == IMAGE and jobs[0]["priority_weight"] == 2
        assert jobs[0]["batch_id"] == default_batch_id(PROJECT)
        sb.jobs()[0]["data"]["image_url"] = "mutated"  # snapshots are copies
        assert sb.jobs()[0]["data"] == IMAGE
    assert sb.stats()["jobs_created"] == 2  # still readable after stop


def parse_envelope(response: httpx.Response) -> tuple[bool, str | None, Any]:
    """How a client reads any answer: `success` whatever the status; non-JSON bodies are failures."""
    try:
        body = response.json()
    except ValueError:
        return False, None, response.text
    if body.get("success") is True:
        return True, None, body["data"]
    return False, body["error"]["code"], body["error"]["errors"]


def test_envelopes_parse_as_documented() -> None:
    with Sandbox() as sb, client_for(sb) as c:
        assert parse_envelope(c.post(JOBS, json=job("ok")))[0] is True
        ok, code, errors = parse_envelope(c.post(JOBS, json=job("bad", data={"image_url": "nope"})))
        assert (ok, code) == (False, "FS_0003")
        assert errors == [{"validation_code": "INVALID_IMAGE_LINK", "meta_data": {"fields": ["data.image_url"]}}]
        sb.configure(legacy=True)
        response = c.post(JOBS, json=job("ok"))
        assert response.status_code == 200 and parse_envelope(response) == (False, "FS_0001", [])
        sb.configure(legacy=False, html_error_rate=1.0)
        assert parse_envelope(c.post(JOBS, json=job("h")))[:2] == (False, None)


# -- life cycle and persistence ---------------------------------------------------------------------
def test_start_is_quick_and_restart_keeps_the_port() -> None:
    sb = Sandbox()
    started = time.perf_counter()
    sb.start()
    assert time.perf_counter() - started < 0.3
    url = sb.base_url
    assert url.startswith("http://127.0.0.1:")
    sb.stop()
    sb.stop()  # idempotent
    with pytest.raises(httpx.ConnectError), client_for(sb) as c:
        c.get("/_sandbox/stats")
    with sb, client_for(sb) as c:
        assert sb.base_url == url and c.get("/_sandbox/stats").status_code == 200


def test_state_file_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "sandbox" / "state.jsonl"
    config = SandboxConfig(state_file=state)
    with Sandbox(config) as sb, client_for(sb) as c:
        batch_id = assert_ok(c.post(BATCH, json={"name": "kept", "description": "d"}))["batch_id"]
        first = assert_ok(c.post(JOBS, json=job("p1", batch_id=batch_id)))["job_id"]
        assert_ok(c.post(JOBS, json=job("p2", data={"video_data": {"frames": [FRAME]}})))
        before = sb.jobs()
    assert len(state.read_text().splitlines()) == 3
    with state.open("a") as handle:
        handle.write('{"kind": "job", "project_id": "torn')  # killed mid-write
    with Sandbox(config) as sb, client_for(sb) as c:
        assert sb.jobs() == before
        assert assert_ok(c.get(f"{JOBS}/{first}"))["batch_id"] == batch_id
        assert_error(c.post(JOBS, json=job("p1")), "FS_0001")
        assert_error(c.post(BATCH, json={"name": "kept"}), "BATCH_CREATION")
        assert [j["reference_id"] for j in assert_ok(c.get(f"{BATCH}/{batch_id}"))["jobs"]] == ["p1"]
        assert_ok(c.post(JOBS, json=job("p3")))
        stats = sb.stats()
        assert stats["jobs_created"] == 1 and stats["jobs_total"] == 3
    with Sandbox(config) as sb:
        assert [j["reference_id"] for j in sb.jobs()] == ["p1", "p2", "p3"]


def test_a_job_deleted_at_the_platform_is_gone_and_stays_gone(tmp_path: Path) -> None:
    """DELETE /_sandbox/jobs/:id (keyless, like the other /_sandbox/ routes): GET job answers FS_0006, the
    listing no longer shows it, its reference_id is free again; a restart replays the deletion; an unknown id
    is a 404."""
    config = SandboxConfig(state_file=tmp_path / "state.jsonl")
    with Sandbox(config) as sb, client_for(sb) as c:
        batch_id = assert_ok(c.post(BATCH, json={"name": "b", "description": "d"}))["batch_id"]
        gone, kept = (assert_ok(c.post(JOBS, json=job(ref, batch_id=batch_id)))["job_id"] for ref in ("p1", "p2"))
        deleted = httpx.delete(f"{sb.base_url}/_sandbox/jobs/{gone}")
        assert deleted.status_code == 200 and deleted.json() == {"deleted": gone}
        assert_error(c.get(f"{JOBS}/{gone}"), "FS_0006")
        assert [j["id"] for j in assert_ok(c.get(f"{BATCH}/{batch_id}"))["jobs"]] == [kept]
        assert httpx.delete(f"{sb.base_url}/_sandbox/jobs/{gone}").status_code == 404
    with Sandbox(config) as sb, client_for(sb) as c:
        assert [j["job_id"] for j in sb.jobs()] == [kept]
        assert_error(c.get(f"{JOBS}/{gone}"), "FS_0006")
        again = assert_ok(c.post(JOBS, json=job("p1", batch_id=batch_id)))["job_id"]
        assert again not in (gone, kept)


def test_state_replay_is_pure() -> None:
    state = SandboxState()
    ids = iter(["00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"])
    _, batch_record = state.create_batch("p", {"name": "b"}, lambda: next(ids))
    _, job_record = state.create_job("p", job("r", batch_id=batch_record["batch_id"]), lambda: next(ids))
    copy = SandboxState()
    assert copy.replay([batch_record, job_record]) == 2
    assert copy.jobs == state.jobs


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state.jsonl"
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from uploader.sandbox import SandboxConfig, serve\n"
        "serve(SandboxConfig(state_file=Path(sys.argv[1])), port=0,"
        " on_ready=lambda url: print(url, flush=True))\n"
        "print('clean exit', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", script, str(state)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, headers={"x-api-key": "sandbox-key"}, trust_env=False) as c:
            assert_ok(c.post(JOBS, json=job("served")))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout.read().strip() == "clean exit"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert json.loads(state.read_text())["reference_id"] == "served"


@pytest.mark.slow
def test_disconnect_during_latency_creates_nothing() -> None:
    with Sandbox(SandboxConfig(latency_ms=400)) as sb:
        with client_for(sb, timeout=0.1) as c, pytest.raises(httpx.ReadTimeout):
            c.post(JOBS, json=job("gone"))
        time.sleep(0.5)
        assert sb.jobs() == []


def test_oversized_body_is_refused(client: httpx.Client) -> None:
    big = job("big", data={**IMAGE, "metadata": {"blob": "x" * (2 * 1024 * 1024)}})
    assert_error(client.post(JOBS, json=big), "GE_0001", 413)
