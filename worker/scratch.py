"""Scratch folders of workers that were killed before they could remove them."""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = ["SCRATCH_PREFIX", "remove_stale_scratch"]

#: A worker's scratch folder is ``TMPDIR/crowdcompute-worker-PID-RANDOM``.
SCRATCH_PREFIX = "crowdcompute-worker-"


def remove_stale_scratch() -> None:
    """Remove the scratch folders of this user's workers that no longer run."""
    folder = tempfile.gettempdir()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        pid = name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        path = os.path.join(folder, name)
        if pid.isdigit() and not _running(int(pid)) and os.stat(path).st_uid == os.getuid():
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
