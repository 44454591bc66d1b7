"""The sandbox: an emulator of the GT Studio (Playment) job API with fault injection.

No machine of ours reaches the real API, so tests, benchmarks and `uploader run --sandbox` talk real HTTP
to this instead. It follows docs/api.md; where the API's documentation leaves a choice open, it decides so:

- Job creation checks, in order: JSON object (GE_0001) → reference_id (FS_0002; a non-string is GE_0001)
  → work_flow_id (FS_0005) → data present and non-empty (FS_0004) → batch_id a UUID of a batch of this
  project (GE_0001; absent/empty/null means the default batch) → data shape (FS_0003, one `errors`
  entry per validation code listing its fields, e.g. `data.video_data.frames[1].src`; duplicate frame
  ids use the code DUPLICATE_FRAME_ID) → priority_weight an int 1-10 (FS_00012; null means 5) →
  reference_id unused in the project (FS_0001).
- GET of an unknown job: FS_0006 "job not found" (GE_0001 if the id is not a UUID). Listing an unknown
  batch or passing a page_token we did not issue: GE_0001. Batch creation without a name: GE_0002;
  "Default batch" is a reserved name in every project (BATCH_CREATION).
- Unknown path or method: 404 resource_error. Request body over 1 MiB: 413 GE_0001.
- Legacy mode answers every JSON error envelope (400/403/404/413 and the injected FS_0000 500) with
  HTTP 200, and a 401 with no body; 429 (rate limit) and the HTML 502 stay as they are.
- Faults model the gateway: they are decided before authentication, and refusals (429/500/502) never
  touch state. A client that disconnects during the injected latency cancels its request (no job).

- Jobs are `created` until a lifecycle moves them (`complete_after_s`): halfway to their (jittered) due
  time `in_progress`, then `completed` (or `rejected` at `reject_rate`). A completed job's `result` is
  a keyless URL under `/_sandbox/results/` serving a JSON annotation; faults reach it with `faults_on_all`.

Introspection: `GET /_sandbox/stats`, `/_sandbox/jobs`, `/_sandbox/health` (no key, never faulted or
counted).
"""

from __future__ import annotations

from uploader.sandbox.config import DEFAULT_API_KEY, SandboxConfig, default_batch_id
from uploader.sandbox.server import Sandbox, serve
from uploader.sandbox.state import DEFAULT_BATCH_NAME

__all__ = ["DEFAULT_API_KEY", "DEFAULT_BATCH_NAME", "Sandbox", "SandboxConfig", "default_batch_id", "serve"]
