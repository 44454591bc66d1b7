"""Temporary files and folders that a killed uploader process leaves behind (a stdin spool, an export's `.part`).

Each is named after the process that made it (its pid and a digest of the host's name), so that the next
command of the same kind removes those whose process is gone: a SIGKILL runs no clean-up. Standard library
only: every layer uses it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

__all__ = ["owned_prefix", "pid_alive", "sweep"]

#: This host, as a leftover's name carries it: another machine sharing the folder keeps its own files.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_prefix(prefix: str) -> str:
    """`prefix` followed by this process's mark, for tempfile.mkstemp / mkdtemp (`sweep` reads it back)."""
    return f"{prefix}{os.getpid()}@{_HOST}-"


def sweep(folder: Path, prefix: str, suffix: str = "") -> None:
    """Remove what processes of this host that no longer exist left in `folder` under `owned_prefix(prefix)`
    names ending in `suffix`. Best effort: a folder that cannot be listed, or a file that cannot be removed,
    is left as it is."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)):
            continue
        pid, _, rest = name[len(prefix) :].partition("@")
        if not pid.isdigit() or not rest.startswith(f"{_HOST}-") or pid_alive(int(pid)):
            continue
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass
