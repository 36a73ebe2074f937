"""``fvsteer finetune | analogy`` against a real server, and the in-process ``fvsteer analogies | alignment`` on
the same tiny model and registry, through ``main``."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch

from app.registry.registry import VectorRegistry
from fvsteer_lab.datasets import SEMEVAL_RELATIONS
from tests.conftest import LiveServer
from tests.test_cli_jobs import antonym_pairs, run

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST = ["--epochs", "3", "--lr", "0.05"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FVSTEER_URL", raising=False)
    monkeypatch.delenv("FVSTEER_ADMIN_TOKEN", raising=False)


def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / f"pairs-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(antonym_pairs(20)))
    return path


def test_finetune_prints_the_summary_and_draws_epochs(live_server: LiveServer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cf-{uuid.uuid4().hex[:8]}"
    code, out, err = run(capsys, "--url", live_server.url, "finetune", name, "--pairs", str(pairs_file(tmp_path)),
                         "--init", "zero", "--layer", "1", "--epochs", "40", "--lr", "0.05")  # long enough to watch
    assert code == 0, err
    assert f"vector             {name}" in out or name in out
    assert "hold-out top-1" in out and "10-shot prompting" in out and "init" in out
    assert "epoch" in err  # the progress bar's postfix


def test_finetune_json_and_bad_lr(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cf-{uuid.uuid4().hex[:8]}"
    code, out, err = run(capsys, "--url", live_server.url, "finetune", name, "--pairs", str(pairs_file(tmp_path)),
                         "--init", "random", *FAST, "--json")
    assert code == 0, err
    job = json.loads(out)
    assert job["state"] == "succeeded" and job["result"]["metrics"]["init"] == "random"
    code, _, err = run(capsys, "--url", live_server.url, "finetune", "x", "--pairs", str(pairs_file(tmp_path)),
                       "--lr", "99")
    assert code == 1 and "lr" in err


def test_analogy_over_the_server(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):  # a bank needs two fine-tuned vectors at least
        code, _, err = run(capsys, "--url", live_server.url, "finetune", f"cb-{uuid.uuid4().hex[:8]}", "--pairs",
                           str(pairs_file(tmp_path)), "--init", "zero", *FAST)
        assert code == 0, err
    code, out, err = run(capsys, "--url", live_server.url, "analogy", "hot", "cold", "up",
                         "--choices", "down", "over", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["answer"] in {"down", "over"} and len(result["choice_scores"]) == 2
    code, out, err = run(capsys, "--url", live_server.url, "analogy", "hot", "cold", "up", "--top", "2")
    assert code == 0, err
    assert out.startswith("hot : cold :: up : ") and "RELATION" in out and "combiner: softmax" in err


@pytest.fixture
def offline_registry(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> VectorRegistry:
    """The tiny model's registry with a random 'fine-tuned' vector per relation SemEval maps to, plus mediation
    stand-ins (``<relation>-cma``), so the offline commands run without a long extraction."""
    from app.bundle import load_bundle

    monkeypatch.setenv("FVSTEER_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("FVSTEER_VECTORS_DIR", str(tmp_path / "vectors"))
    monkeypatch.delenv("FVSTEER_REDIS_URL", raising=False)
    local = load_bundle()
    generator = torch.Generator().manual_seed(0)
    for relation in sorted(set(SEMEVAL_RELATIONS.values())):
        for name, method in ((relation, "finetuned"), (f"{relation}-cma", "cma")):
            vector = torch.randn(local.model.adapter.d_model, generator=generator)
            local.registry.add(vector, {"name": name, "relation": relation, "layer": "1", "method": method})
    return local.registry


def test_analogies_on_a_csv(offline_registry: VectorRegistry, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    dataset = tmp_path / "vat.csv"
    dataset.write_text("relation,A,B,C,D,D_foil\nOpposite,hot,cold,up,down,high\nSynonym,big,large,small,little,"
                       "huge\nFunction,fly,bird,hop,rabbit,leg\n")
    code, out, err = run(capsys, "analogies", "--dataset", str(dataset), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"baseline", "composite", "n"} <= set(result) and result["n"] == 3 and result["n_oracle"] == 2
    code, out, err = run(capsys, "analogies", "--dataset", str(dataset))
    assert code == 0 and "overall" in out and "COMPOSITE" in out and "ORACLE FIRST" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("relation,A,B\nx,y,z\n")
    code, _, err = run(capsys, "analogies", "--dataset", str(bad))
    assert code == 1 and "invalid_request" in err and "bad.csv" in err


@pytest.mark.skipif(not (DATA / "semeval2012_task2").is_dir(), reason="../shared/data is not here")
def test_alignment_table(offline_registry: VectorRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "alignment", "--semeval", str(DATA / "semeval2012_task2"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {row["subcategory"] for row in result["subcategories"]} == set(SEMEVAL_RELATIONS)
    for row in result["subcategories"]:
        assert row["n"] > 5 and all(-1.0 <= row[key] <= 1.0 for key in ("finetuned", "mediation", "unsteered"))
    assert set(result["mean"]) == {"finetuned", "mediation", "unsteered"}
