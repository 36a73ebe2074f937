"""``make vectors`` on a tiny model: relations trained in batches give the vectors the fine-tune job makes alone,
with the same metadata; a second run finds them and the combiner up to date; the closing table lists every
relation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.analogy.basis import Bank
from app.bundle import load_bundle
from app.cache.head_means import MemoryHeadMeanCache
from app.fv.finetuned import make_finetuned
from app.fv.options import FinetuneOptions
from app.fv.pairs import dataset_sha256, relation_pairs
from fvsteer_lab import starter_bank

RELATIONS = ["capitalize", "singular-plural", "present-past"]  # short words: the tiny model's prompts stay short


def test_batched_build_makes_the_vectors_a_job_makes_and_resumes(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FVSTEER_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("FVSTEER_VECTORS_DIR", str(tmp_path / "vectors"))
    monkeypatch.delenv("FVSTEER_REDIS_URL", raising=False)
    assert starter_bank.main(["--relations", ",".join(RELATIONS), "--batch-relations", "2"]) == 0
    err = capsys.readouterr().err
    assert "training 3, 2 at a time" in err

    bundle = load_bundle()
    options = FinetuneOptions()
    for name in RELATIONS:
        stored = bundle.registry.get(name)
        pairs = relation_pairs(name)
        assert stored.meta.method == "finetuned" and stored.meta.dataset_sha256 == dataset_sha256(pairs)
        metrics = stored.meta.metrics
        assert {key: metrics[key] for key in (*starter_bank.RECORDED_OPTIONS, "init")} == {
            **{key: getattr(options, key) for key in starter_bank.RECORDED_OPTIONS}, "init": "mediation"}
        ran = len(metrics["history"])  # every epoch, or until `patience` epochs had not beaten the best one
        assert ran == options.epochs or ran - metrics["best_epoch"] == options.patience
        assert metrics["holdout_top1_after"] >= 0
        table_row = next(line for line in err.splitlines() if line.startswith(name + " "))
        assert f"{metrics['holdout_top1_after']:.2f}" in table_row
    # The first relation trained in a mixed batch: the vector the fine-tune job makes from its pairs alone.
    stored, alone = bundle.registry.get(RELATIONS[0]), make_finetuned(
        bundle.model, relation_pairs(RELATIONS[0]), options, MemoryHeadMeanCache())
    assert alone.result.best_epoch == stored.meta.metrics["best_epoch"]
    assert torch.allclose(stored.vector, alone.vector, atol=1e-4), (stored.vector - alone.vector).abs().max()
    assert (bundle.registry.folder / "combiner.json").exists()

    combiner_path = bundle.registry.folder / "combiner.json"
    fitted = combiner_path.read_bytes()
    relations = json.loads(fitted)["relations"]
    assert sorted(relations) == sorted(RELATIONS)
    assert json.loads(fitted)["bank_sha256"] == Bank.from_registry(bundle.registry, relations).sha256()

    # Nothing changed: neither the vectors nor the combiner are made again.
    assert starter_bank.main(["--relations", ",".join(RELATIONS)]) == 0
    err = capsys.readouterr().err
    assert "3 of 3 relations up to date; training 0" in err and "is up to date" in err
    assert combiner_path.read_bytes() == fitted

    # A combiner fitted over other vectors (here: its record says so) is refit, and so is one asked for.
    record = json.loads(fitted)
    combiner_path.write_text(json.dumps({**record, "bank_sha256": "0" * 64}), encoding="utf-8")
    assert starter_bank.main(["--relations", ",".join(RELATIONS)]) == 0
    assert "saved to" in capsys.readouterr().err
    assert json.loads(combiner_path.read_bytes())["bank_sha256"] == record["bank_sha256"]
    assert starter_bank.main(["--relations", ",".join(RELATIONS), "--combiner-only"]) == 0
    assert "saved to" in capsys.readouterr().err


def test_a_build_in_progress_changes_nothing_served_until_the_combiner_moves_with_it(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Vectors are made in vectors/.bank-build/<model>/; the served folder keeps its vectors and combiner (fitted
    over each other) until a run has fitted the new combiner, then both move in and the build folder goes."""
    monkeypatch.setenv("FVSTEER_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("FVSTEER_VECTORS_DIR", str(tmp_path / "vectors"))
    monkeypatch.delenv("FVSTEER_REDIS_URL", raising=False)
    relations = ",".join(RELATIONS)
    assert starter_bank.main(["--relations", relations]) == 0
    served = load_bundle().registry.folder
    build = served.parent / starter_bank.BUILD_FOLDER
    assert not build.exists()
    before = {path.name: path.read_bytes() for path in served.iterdir()}

    assert starter_bank.main(["--relations", RELATIONS[0], "--force", "--vectors-only"]) == 0
    assert "training 1" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in served.iterdir()} == before  # nothing served changed
    staged = build / served.name / f"{RELATIONS[0]}.safetensors"
    assert staged.exists()
    # Resuming finds it in the build folder (--force rebuilds what is served, not a build in progress).
    assert starter_bank.main(["--relations", RELATIONS[0], "--force", "--vectors-only"]) == 0
    assert "training 0" in capsys.readouterr().err

    rebuilt = staged.read_bytes()
    assert starter_bank.main(["--relations", relations]) == 0
    err = capsys.readouterr().err
    assert "moved 1 vectors and the combiner" in err and not build.exists()
    assert (served / f"{RELATIONS[0]}.safetensors").read_bytes() == rebuilt
    record = json.loads((served / "combiner.json").read_bytes())
    assert record["bank_sha256"] == Bank.from_registry(load_bundle().registry, record["relations"]).sha256()
