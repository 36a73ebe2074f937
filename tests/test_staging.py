"""Staging files a dead writer left behind are swept when a registry or job folder is taken into use; a live
writer's young staging file and every real file stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from app.jobs.manager import JobManager
from app.registry.registry import ModelIdentity, VectorRegistry
from app.staging import STALE_AFTER_S, sweep_staging


def aged(path: Path, seconds: float) -> Path:
    path.write_bytes(b"half a file")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_old_staging_files_go_and_young_ones_and_real_files_stay(tmp_path: Path) -> None:
    old = aged(tmp_path / "v.safetensors.abc123.tmp", STALE_AFTER_S + 60)
    young = aged(tmp_path / "w.safetensors.def456.tmp", 5)
    real = aged(tmp_path / "v.safetensors", STALE_AFTER_S + 60)
    assert sweep_staging(tmp_path) == 1
    assert not old.exists() and young.exists() and real.exists()
    assert sweep_staging(tmp_path / "absent") == 0


def test_a_registry_and_a_job_manager_sweep_their_folders(tmp_path: Path) -> None:
    registry = VectorRegistry(tmp_path / "vectors", ModelIdentity("tiny", "tiny", "fp", d_model=4, n_layers=2))
    registry.add(torch.ones(4), {"name": "kept", "layer": "0"})
    left = aged(registry.folder / "gone.safetensors.x1y2.tmp", STALE_AFTER_S * 2)
    registry.load()
    assert not left.exists() and [stored.name for stored in registry.list()] == ["kept"]
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    record = aged(jobs / "0123abcd.tmp", STALE_AFTER_S * 2)
    manager = JobManager(jobs)
    manager.start()
    try:
        assert not record.exists()
    finally:
        manager.stop()
