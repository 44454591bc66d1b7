"""The sandbox's settings: one dataclass, shared by the Python API and the `uploader sandbox` command.

Each field carries `metadata["help"]` so the CLI can build its options from this single source.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uploader.sandbox.lifecycle import Lifecycle

__all__ = ["DEFAULT_API_KEY", "RUNTIME_FIELDS", "SandboxConfig", "default_batch_id"]

#: The key a sandbox accepts unless told otherwise.
DEFAULT_API_KEY = "sandbox-key"


@functools.lru_cache(maxsize=1024)
def default_batch_id(project_id: str) -> str:
    """The id of a project's "Default batch": deterministic, so clients and tests can name it up front."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-default-batch/{project_id}"))


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class SandboxConfig:
    """How a sandbox behaves; every fault is off by default, so a bare config is a well-behaved API."""

    api_key: str = field(default=DEFAULT_API_KEY, metadata=_help("API key the sandbox accepts (x-api-key)."))
    latency_ms: float = field(default=0, metadata=_help("Fixed delay added to each faultable request (ms)."))
    jitter_ms: float = field(default=0, metadata=_help("Uniform random extra delay, 0..jitter (ms)."))
    error_rate: float = field(default=0, metadata=_help("Fraction answered 500 FS_0000 (job not created)."))
    html_error_rate: float = field(
        default=0, metadata=_help("Fraction answered 502 with an HTML body (job not created).")
    )
    drop_rate: float = field(
        default=0, metadata=_help("Fraction whose connection is closed without a reply AFTER the job is created.")
    )
    rate_limit: float | None = field(
        default=None, metadata=_help("Max requests per second (token bucket); excess gets 429.")
    )
    rate_burst: float | None = field(
        default=None, metadata=_help("Token bucket size; default max(1, rate_limit / 10).")
    )
    retry_after_s: int = field(default=1, metadata=_help("Retry-After seconds sent with a 429 (at least 1)."))
    slow_rate: float = field(
        default=0, metadata=_help("Fraction of replies delayed by slow_ms (the job is created first).")
    )
    slow_ms: float = field(default=0, metadata=_help("Delay of a slow reply (ms)."))
    legacy: bool = field(default=False, metadata=_help("Behave like the older server: errors as HTTP 200, bare 401."))
    seed: int | None = field(default=None, metadata=_help("Seed of the fault random generator."))
    projects: frozenset[str] | None = field(
        default=None, metadata=_help("Only these projects exist (others 404); default: created on first use.")
    )
    forbidden_projects: frozenset[str] = field(
        default=frozenset(), metadata=_help("Projects the key may not use (403).")
    )
    state_file: Path | None = field(
        default=None, metadata=_help("JSONL journal of jobs and batches, replayed on start.")
    )
    page_size: int = field(default=100, metadata=_help("Jobs per page when listing a batch."))
    faults_on_all: bool = field(
        default=False, metadata=_help("Apply faults to every API request, not only job creation.")
    )
    check_attachments: bool = field(
        default=False,
        metadata=_help(
            "Answer FS_0007 for a job whose image or frame URL is a /_sandbox/files/ file that would "
            "not open (an error status, empty, or not an image or video)."
        ),
    )
    complete_after_s: float | None = field(
        default=None, metadata=_help("Seconds after creation when a job becomes final (default: never).")
    )
    complete_jitter_s: float = field(
        default=0, metadata=_help("Each job's final time is complete_after_s plus or minus up to this (s).")
    )
    reject_rate: float = field(default=0, metadata=_help("Fraction of final jobs that are rejected, not completed."))
    working_status: str = field(
        default="in_progress", metadata=_help("Status word of a job halfway to its final time.")
    )
    result_failure: str = field(
        default="", metadata=_help("Answer every result URL with '403' (an access denied) or 'html' (a login page).")
    )

    def lifecycle(self) -> Lifecycle:
        """How jobs move through their statuses under this config."""
        return Lifecycle(self.complete_after_s, self.complete_jitter_s, self.reject_rate, self.working_status)

    def __post_init__(self) -> None:
        # Accept any iterable for the project sets (e.g. a list from the CLI) but store frozensets.
        if self.projects is not None and not isinstance(self.projects, frozenset):
            object.__setattr__(self, "projects", frozenset(self.projects))
        if not isinstance(self.forbidden_projects, frozenset):
            object.__setattr__(self, "forbidden_projects", frozenset(self.forbidden_projects))
        if self.state_file is not None and not isinstance(self.state_file, Path):
            object.__setattr__(self, "state_file", Path(self.state_file))
        self.validate()

    def validate(self) -> None:
        """Refuse settings that cannot mean anything, so a typo fails loudly instead of silently."""
        for name in ("error_rate", "html_error_rate", "drop_rate", "slow_rate", "reject_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.error_rate + self.html_error_rate > 1 + 1e-9:
            raise ValueError("error_rate + html_error_rate must not exceed 1")
        if self.drop_rate + self.slow_rate > 1 + 1e-9:
            raise ValueError("drop_rate + slow_rate must not exceed 1")
        self._validate_lifecycle()
        for name in ("latency_ms", "jitter_ms", "slow_ms", "complete_jitter_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit is not None and self.rate_limit <= 0:
            raise ValueError("rate_limit must be positive (or None for no limit)")
        if self.rate_burst is not None and self.rate_burst < 1:
            raise ValueError("rate_burst must be at least 1")
        if self.retry_after_s < 1:
            raise ValueError("retry_after_s must be at least 1")
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        if not self.api_key:
            raise ValueError("api_key must not be empty")

    def _validate_lifecycle(self) -> None:
        if self.complete_after_s is not None and self.complete_after_s < 0:
            raise ValueError("complete_after_s must not be negative")
        if self.result_failure not in ("", "403", "html"):
            raise ValueError("result_failure must be '', '403' or 'html'")

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied; unknown names raise TypeError, bad values ValueError."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        # Never show the key: configs end up in logs and test failure messages.
        shown = ", ".join(
            f"{f.name}={'***' if f.name == 'api_key' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"SandboxConfig({shown})"


#: Fields that `Sandbox.configure()` may change while the sandbox runs (the journal is fixed at start).
RUNTIME_FIELDS = frozenset(f.name for f in dataclasses.fields(SandboxConfig)) - {"state_file"}
