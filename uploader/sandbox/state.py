"""The sandbox's in-memory model of projects, batches and jobs, and the API's validation rules.

Pure: no I/O, no clock, no randomness (ids come from a caller-supplied factory), so every rule of docs/api.md
can be tested as a plain function. Each operation returns the success `data` and, when it changed
something, the journal record that replays the change; refusals raise `ApiFailure`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from uploader.sandbox.config import default_batch_id
from uploader.sandbox.files import PREFIX as FILES_PREFIX
from uploader.sandbox.files import fetchable, parse_spec
from uploader.sandbox.lifecycle import RESULTS_PREFIX, Lifecycle, result_document

__all__ = [
    "DEFAULT_BATCH_NAME",
    "ApiFailure",
    "Batch",
    "Project",
    "SandboxState",
    "decode_body",
    "decode_page_token",
    "encode_page_token",
]

#: Name of the batch that receives jobs sent without a batch_id (reserved in every project).
DEFAULT_BATCH_NAME = "Default batch"
#: What a job is worth when the client says nothing.
DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 1, 10
_DATA_KINDS = ("image_url", "video_data", "sensor_data")


class ApiFailure(Exception):
    """A refusal the API answers with an error envelope; `status` is the HTTP status in normal mode."""

    def __init__(self, code: str, message: str, errors: list[dict[str, Any]] | None = None, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.errors = errors or []
        self.status = status

    def envelope(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "errors": self.errors}, "success": False}


@dataclass
class Batch:
    """A batch and its jobs' ids in creation order (the listing order)."""

    id: str
    project_id: str
    name: str
    description: str = ""
    job_ids: list[str] = field(default_factory=list)


@dataclass
class Project:
    """A project: its batches (the default one included) and its reference_id index."""

    id: str
    batches: dict[str, Batch] = field(default_factory=dict)
    batch_names: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)  # reference_id -> job_id


def decode_body(raw: bytes) -> dict[str, Any] | None:
    """The request body as a JSON object, or None when it is malformed or not an object."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def encode_page_token(offset: int) -> str:
    """An opaque page token: clients must pass it back, not compute it."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The offset a token stands for; ApiFailure GE_0001 for anything we did not issue."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        offset = int(number)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        offset = -1
        prefix = ""
    if prefix != "offset" or offset < 0:
        raise ApiFailure("GE_0001", "invalid parameter: page_token")
    return offset


def _required_text(body: dict[str, Any], field: str, missing_code: str) -> str:
    """A field POST /jobs requires as a non-empty string: `missing_code` when absent, GE_0001 when not text."""
    value = body.get(field)
    if value is None or value == "":
        raise ApiFailure(missing_code, f"{field} is missing")
    if not isinstance(value, str):
        raise ApiFailure("GE_0001", f"invalid parameter: {field} must be a string")
    return value


def _batch_of(body: dict[str, Any], project: Project) -> str:
    """The job's batch: the one named (a UUID of a batch of the project), else the project's default batch."""
    batch_id = body.get("batch_id")
    if batch_id is None or batch_id == "":
        return default_batch_id(project.id)
    if not isinstance(batch_id, str) or not _is_uuid(batch_id) or batch_id not in project.batches:
        raise ApiFailure("GE_0001", "invalid parameter: batch_id")
    return batch_id


def _check_data(data: Any) -> None:
    """FS_0003 unless a job's (non-empty) data is an object whose fields pass `data_problems`."""
    if not isinstance(data, dict):
        raise ApiFailure(
            "FS_0003",
            "Invalid data passed",
            [{"validation_code": "WRONG_DATA_TYPE", "meta_data": {"fields": ["data"]}}],
        )
    errors = data_problems(data)
    if errors:
        raise ApiFailure("FS_0003", "Invalid data passed", errors)


def _priority_of(body: dict[str, Any]) -> int:
    """The job's priority_weight: DEFAULT_PRIORITY when absent, FS_00012 unless an integer in range."""
    priority = body.get("priority_weight")
    if priority is None:
        return DEFAULT_PRIORITY
    if type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ApiFailure("FS_00012", f"priority_weight must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}")
    return priority


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# An http(s) URL with a host and no whitespace; a regex because urlsplit costs more than the whole
# rest of a job's validation.
_HTTP_URL = re.compile(r"https?://[^\s/?#@]+(?:@[^\s/?#@]+)?(?:[/?#]\S*)?", re.IGNORECASE)


def _is_http_url(value: str) -> bool:
    return _HTTP_URL.fullmatch(value) is not None


class _Problems:
    """FS_0003 details, grouped as the API does: one entry per validation code listing its fields."""

    def __init__(self) -> None:
        self.by_code: dict[str, list[str]] = {}

    def add(self, code: str, path: str) -> None:
        self.by_code.setdefault(code, []).append(path)

    def errors(self) -> list[dict[str, Any]]:
        return [{"validation_code": c, "meta_data": {"fields": f}} for c, f in self.by_code.items()]


def _check_link(problems: _Problems, value: Any, path: str) -> None:
    if value is None or value == "":
        problems.add("MANDATORY_FIELD_EMPTY", path)
    elif not isinstance(value, str):
        problems.add("WRONG_DATA_TYPE", path)
    elif not _is_http_url(value):
        problems.add("INVALID_IMAGE_LINK", path)


def _check_frames(problems: _Problems, video: Any, path: str) -> None:
    if not isinstance(video, dict):
        problems.add("WRONG_DATA_TYPE", path)
        return
    if "frames" not in video:
        problems.add("FIELD_NOT_FOUND", f"{path}.frames")
        return
    frames = video["frames"]
    if not isinstance(frames, list):
        problems.add("WRONG_DATA_TYPE", f"{path}.frames")
        return
    if not frames:
        problems.add("MANDATORY_FIELD_EMPTY", f"{path}.frames")
        return
    seen: set[str] = set()
    for i, frame in enumerate(frames):
        where = f"{path}.frames[{i}]"
        if not isinstance(frame, dict):
            problems.add("WRONG_DATA_TYPE", where)
            continue
        if "frame_id" not in frame:
            problems.add("FIELD_NOT_FOUND", f"{where}.frame_id")
        elif frame["frame_id"] is None or frame["frame_id"] == "":
            problems.add("MANDATORY_FIELD_EMPTY", f"{where}.frame_id")
        elif not isinstance(frame["frame_id"], str):
            problems.add("WRONG_DATA_TYPE", f"{where}.frame_id")
        elif frame["frame_id"] in seen:
            problems.add("DUPLICATE_FRAME_ID", f"{where}.frame_id")
        else:
            seen.add(frame["frame_id"])
        if "src" not in frame:
            problems.add("FIELD_NOT_FOUND", f"{where}.src")
        else:
            _check_link(problems, frame["src"], f"{where}.src")


def data_problems(data: dict[str, Any]) -> list[dict[str, Any]]:
    """FS_0003 `errors` for a job's non-empty `data` object; empty when the data is acceptable."""
    problems = _Problems()
    if not any(kind in data for kind in _DATA_KINDS):
        for kind in _DATA_KINDS:
            problems.add("FIELD_NOT_FOUND", f"data.{kind}")
    if "image_url" in data:
        _check_link(problems, data["image_url"], "data.image_url")
    if "video_data" in data:
        _check_frames(problems, data["video_data"], "data.video_data")
    if "sensor_data" in data:
        sensor = data["sensor_data"]
        # Passed through unchanged (docs/api.md); only its shape is checked.
        if not isinstance(sensor, dict):
            problems.add("WRONG_DATA_TYPE", "data.sensor_data")
        elif "frames" in sensor and not isinstance(sensor["frames"], list):
            problems.add("WRONG_DATA_TYPE", "data.sensor_data.frames")
    return problems.errors()


def unfetchable_attachment(data: dict[str, Any]) -> str | None:
    """The first image or frame URL of `data` that is a sandbox file the platform could not open, or None.
    Only /_sandbox/files/ URLs are judged (by what their URL asks for): the sandbox fetches nothing."""
    urls = [data.get("image_url")]
    video = data.get("video_data")
    if isinstance(video, dict) and isinstance(video.get("frames"), list):
        urls += [frame.get("src") for frame in video["frames"] if isinstance(frame, dict)]
    for url in urls:
        if isinstance(url, str):
            parts = urlsplit(url)
            spec = parse_spec(parts.path, parts.query)
            if parts.path.startswith(FILES_PREFIX) and (spec is None or not fetchable(spec)):
                return url
    return None


def _job_view(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in _JOB_VIEW_KEYS}


_JOB_VIEW_KEYS = (
    "project_id",
    "reference_id",
    "job_id",
    "batch_id",
    "status",
    "work_flow_id",
    "priority_weight",
    "tag",
    "result",
)


class SandboxState:
    """Everything the API remembers. Jobs are kept in creation order."""

    def __init__(self, lifecycle: Lifecycle | None = None) -> None:
        self.projects: dict[str, Project] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lifecycle = lifecycle or Lifecycle()

    def status_of(self, job: dict[str, Any], now: float) -> str:
        """The job's status at `now` (its lifecycle; `created` when jobs never move)."""
        return self.lifecycle.status(job["job_id"], job["created_at"], now)

    # -- projects and batches -------------------------------------------------------------------
    def project(self, project_id: str) -> Project:
        """The project, created with its default batch on first use."""
        project = self.projects.get(project_id)
        if project is None:
            project = self.projects[project_id] = Project(project_id)
            default = Batch(default_batch_id(project_id), project_id, DEFAULT_BATCH_NAME)
            project.batches[default.id] = default
            project.batch_names.add(DEFAULT_BATCH_NAME)
        return project

    def create_batch(
        self, project_id: str, body: dict[str, Any] | None, new_id: Callable[[], str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST /batch: `({"batch_id"}, journal record)`; BATCH_CREATION when the name is taken."""
        if body is None:
            raise ApiFailure("GE_0001", "invalid parameter: malformed JSON body")
        name = body.get("name")
        if name is None or name == "":
            raise ApiFailure("GE_0002", "parameter missing: name")
        description = body.get("description", "")
        if not isinstance(name, str) or not isinstance(description, str | None):
            raise ApiFailure("GE_0001", "invalid parameter: name and description must be strings")
        if name in self.project(project_id).batch_names:
            raise ApiFailure("BATCH_CREATION", "batch name already exists")
        record = {
            "kind": "batch",
            "project_id": project_id,
            "batch_id": new_id(),
            "name": name,
            "description": description or "",
        }
        self.apply(record)
        return {"batch_id": record["batch_id"]}, record

    def list_batch(
        self, project_id: str, batch_id: str, page_token: str, page_size: int, now: float = 0.0
    ) -> dict[str, Any]:
        """GET /batch/:id: one page of the batch's jobs in creation order (statuses at `now`); token "" on the
        last page."""
        batch = self.project(project_id).batches.get(batch_id)
        if batch is None:
            raise ApiFailure("GE_0001", "invalid parameter: batch_id (no such batch in this project)")
        offset = decode_page_token(page_token) if page_token else 0
        ids = batch.job_ids[offset : offset + page_size]
        end = offset + len(ids)
        jobs = []
        for job_id in ids:
            job = self.jobs[job_id]
            jobs.append(
                {
                    "id": job_id,
                    "reference_id": job["reference_id"],
                    "status": self.status_of(job, now),
                    "work_flow_id": job["work_flow_id"],
                }
            )
        return {
            "id": batch.id,
            "project_id": project_id,
            "name": batch.name,
            "jobs": jobs,
            "next_page_token": encode_page_token(end) if end < len(batch.job_ids) else "",
        }

    # -- jobs -----------------------------------------------------------------------------------
    def create_job(
        self,
        project_id: str,
        body: dict[str, Any] | None,
        new_id: Callable[[], str],
        check_attachments: bool = False,
        now: float = 0.0,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """POST /jobs: checks in the order uploader.sandbox's docstring gives, then stores the job; returns (data,
        journal record)."""
        if body is None:
            raise ApiFailure("GE_0001", "invalid parameter: malformed JSON body")
        reference_id = _required_text(body, "reference_id", "FS_0002")
        work_flow_id = _required_text(body, "work_flow_id", "FS_0005")
        data = body.get("data")
        if data is None or data == {} or data == "" or data == []:
            raise ApiFailure("FS_0004", "data is empty")
        project = self.project(project_id)
        batch_id = _batch_of(body, project)
        _check_data(data)
        priority = _priority_of(body)
        if check_attachments:
            bad = unfetchable_attachment(data)
            if bad is not None:
                raise ApiFailure("FS_0007", f"attachment not accessible: {bad}")
        if reference_id in project.refs:
            raise ApiFailure("FS_0001", "reference_id already exists")
        record = {
            "kind": "job",
            "project_id": project_id,
            "batch_id": batch_id,
            "reference_id": reference_id,
            "job_id": new_id(),
            "work_flow_id": work_flow_id,
            "priority_weight": priority,
            "data": data,
            "created_at": now,
        }
        self.apply(record)
        return {"job_id": record["job_id"], "reference_id": reference_id, "work_flow_id": work_flow_id}, record

    def _job(self, project_id: str, job_id: str) -> dict[str, Any]:
        if not _is_uuid(job_id):
            raise ApiFailure("GE_0001", "invalid parameter: job_id")
        job = self.jobs.get(job_id)
        if job is None or job["project_id"] != project_id:
            raise ApiFailure("FS_0006", "job not found")
        return job

    def get_job(self, project_id: str, job_id: str, now: float = 0.0, base_url: str = "") -> dict[str, Any]:
        """GET /jobs/:id at `now`: a completed job's `result` is the URL of its annotation under `base_url`.
        GE_0001 when job_id is not a UUID, FS_0006 (job not found) when it is unknown."""
        view = _job_view(self._job(project_id, job_id))
        view["status"] = self.status_of(self.jobs[job_id], now)
        if view["status"] == "completed":
            view["result"] = f"{base_url}{RESULTS_PREFIX}{project_id}/{job_id}"
        return view

    def result(self, project_id: str, job_id: str, now: float) -> dict[str, Any]:
        """A completed job's annotation; FS_0006 for any other job (not found, or not completed yet)."""
        job = self._job(project_id, job_id)
        if self.status_of(job, now) != "completed":
            raise ApiFailure("FS_0006", "job has no result", status=404)
        return result_document(job)

    def delete_job(self, job_id: str) -> dict[str, Any] | None:
        """Remove a job as if deleted at the platform; returns its journal record, or None when no such job."""
        job = self.jobs.get(job_id)
        if job is None:
            return None
        record = {"kind": "deleted", "project_id": job["project_id"], "job_id": job_id}
        self.apply(record)
        return record

    # -- journal replay ---------------------------------------------------------------------------
    def apply(self, record: dict[str, Any]) -> None:
        """Apply one journal record (also how live changes are made, so replay cannot diverge)."""
        project = self.project(record["project_id"])
        if record["kind"] == "batch":
            batch = Batch(record["batch_id"], project.id, record["name"], record.get("description") or "")
            project.batches[batch.id] = batch
            project.batch_names.add(batch.name)
        elif record["kind"] == "job":
            job = {k: v for k, v in record.items() if k != "kind"}
            job.update(status="created", tag=None, result=None)
            job.setdefault("created_at", 0.0)
            home = project.batches.get(job["batch_id"])
            if home is None:  # a journal edited by hand; keep the job reachable rather than lose it
                home = project.batches[default_batch_id(project.id)]
                job["batch_id"] = home.id
            self.jobs[job["job_id"]] = job
            project.refs[job["reference_id"]] = job["job_id"]
            home.job_ids.append(job["job_id"])
        elif record["kind"] == "deleted":
            gone = self.jobs.pop(record["job_id"], None)
            if gone is None:  # a journal edited by hand: nothing to delete
                return
            project.refs.pop(gone["reference_id"], None)
            project.batches[gone["batch_id"]].job_ids.remove(gone["job_id"])  # apply() keeps every job in one
        else:
            raise ValueError(f"unknown journal record kind {record.get('kind')!r}")

    def replay(self, records: Iterable[dict[str, Any]]) -> int:
        """Apply records in order; returns how many were applied."""
        count = 0
        for record in records:
            self.apply(record)
            count += 1
        return count

    def job_records(self) -> list[dict[str, Any]]:
        """Every job with its full data, for /_sandbox/jobs (shallow copies; data is never mutated here)."""
        keys = ("project_id", "batch_id", "reference_id", "job_id", "work_flow_id", "priority_weight", "data")
        return [{k: job[k] for k in keys} for job in self.jobs.values()]
