"""Staging files: every file fvsteer writes is written whole under ``<final name>.<random>.tmp`` and renamed into
place, so readers never see half a file. A writer that dies (SIGKILL, a full disk, a lost node) leaves its staging
file behind; nothing reads it, but nothing removed it either, and on a shared folder they pile up. Folders are swept
when a process starts using them, of staging files older than any write takes (a live writer's file is young)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".tmp"
STALE_AFTER_S = 3600.0


def sweep_staging(folder: Path, older_than_s: float = STALE_AFTER_S) -> int:
    """Remove ``*.tmp`` files directly in ``folder`` last modified more than ``older_than_s`` ago; how many went."""
    removed = 0
    cutoff = time.time() - older_than_s
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # another process swept it first
            if entry.name.endswith(STAGING_SUFFIX) and entry.is_file() and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
    if removed:
        log.info("removed %d stale staging files from %s", removed, folder)
    return removed
