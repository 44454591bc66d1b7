"""The sandbox's job lifecycle: statuses that move with time, results served at URLs, faults on them."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from uploader.sandbox import Sandbox, SandboxConfig, default_batch_id
from uploader.sandbox.lifecycle import Lifecycle, result_document

PROJECT = "proj-life"


def _create(client: httpx.Client, refs: list[str]) -> list[str]:
    ids = []
    for ref in refs:
        body = {"reference_id": ref, "work_flow_id": "wf", "data": {"image_url": "https://cdn.example.com/a.jpg"}}
        response = client.post(f"/v1/projects/{PROJECT}/jobs", json=body)
        assert response.status_code == 200, response.text
        ids.append(response.json()["data"]["job_id"])
    return ids


def _client(sb: Sandbox) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url, headers={"x-api-key": sb.api_key}, trust_env=False, timeout=5)


def test_lifecycle_moves_created_working_final_with_jitter() -> None:
    life = Lifecycle(complete_after_s=10, jitter_s=2, reject_rate=0.0, working_status="sent_for_review")
    job_id = str(uuid.uuid4())
    due = life.due(job_id, 100.0)
    assert due is not None and 108.0 <= due <= 112.0
    assert life.status(job_id, 100.0, 100.0) == "created"
    assert life.status(job_id, 100.0, due - 0.01) == "sent_for_review"
    assert life.status(job_id, 100.0, due) == "completed"
    dues = {life.due(str(uuid.uuid4()), 0.0) for _ in range(50)}
    assert len(dues) > 40  # jitter spreads the jobs
    assert Lifecycle().status(job_id, 0.0, 1e12) == "created"  # no lifecycle: jobs never move


def test_reject_rate_rejects_about_that_fraction() -> None:
    life = Lifecycle(complete_after_s=0, reject_rate=0.3)
    statuses = [life.status(str(uuid.uuid4()), 0.0, 1.0) for _ in range(2000)]
    assert set(statuses) == {"completed", "rejected"}
    assert 0.25 < statuses.count("rejected") / 2000 < 0.35


def test_result_document_is_stable_and_realistic() -> None:
    job = {
        "job_id": str(uuid.uuid4()),
        "reference_id": "r",
        "project_id": "p",
        "work_flow_id": "w",
        "data": {"image_url": "https://x/a.jpg"},
    }
    doc = result_document(job)
    assert doc == result_document(job)
    assert doc["reference_id"] == "r" and len(doc["annotations"]) >= 2
    assert {"_id", "type", "label", "coordinates", "attributes"} <= set(doc["annotations"][0])


def test_completed_job_has_a_result_url_served_by_the_sandbox() -> None:
    with Sandbox(SandboxConfig(complete_after_s=0)) as sb, _client(sb) as client:
        (job_id,) = _create(client, ["a"])
        data = client.get(f"/v1/projects/{PROJECT}/jobs/{job_id}").json()["data"]
        assert data["status"] == "completed"
        assert data["result"].startswith(sb.base_url)
        listing = client.get(f"/v1/projects/{PROJECT}/batch/{default_batch_id(PROJECT)}").json()["data"]
        assert [j["status"] for j in listing["jobs"]] == ["completed"]
        with httpx.Client(trust_env=False) as plain:  # keyless, like a signed URL
            result = plain.get(data["result"])
        assert result.status_code == 200 and result.json()["job_id"] == job_id
        assert sb.stats()["result_requests"] == 1


def test_jobs_stay_created_until_due_and_have_no_result() -> None:
    with Sandbox(SandboxConfig(complete_after_s=3600)) as sb, _client(sb) as client:
        (job_id,) = _create(client, ["a"])
        data = client.get(f"/v1/projects/{PROJECT}/jobs/{job_id}").json()["data"]
        assert data["status"] == "created" and data["result"] is None
        early = client.get(f"/_sandbox/results/{PROJECT}/{job_id}")
        assert early.status_code == 404


def test_result_failures_and_faults_reach_result_urls() -> None:
    with Sandbox(SandboxConfig(complete_after_s=0, result_failure="403")) as sb, _client(sb) as client:
        (job_id,) = _create(client, ["a"])
        url: Any = client.get(f"/v1/projects/{PROJECT}/jobs/{job_id}").json()["data"]["result"]
        assert client.get(url).status_code == 403
        sb.configure(result_failure="html")
        page = client.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        sb.configure(result_failure="", faults_on_all=True, html_error_rate=1.0)
        assert client.get(url).status_code == 502
        sb.configure(html_error_rate=0.0, faults_on_all=False)
        assert client.get(url).status_code == 200
