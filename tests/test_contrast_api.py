"""``POST /vectors/contrast`` on a live server over the tiny llama: the job saves the vector a direct computation on
the same model gives (template applied, both methods), steers completions at once, reports its separation, and
refuses what it cannot make, naming the parameter."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import httpx
import pytest
import torch
from fvsteer_client import Client
from safetensors.torch import load

from app.fv.contrast import ContrastOptions, contrast_vectors
from app.model.adapter import adapt
from fvsteer_cli.main import main
from tests.conftest import LiveServer
from tests.tiny_models import tiny_model, tiny_tokenizer

PAIRS = [("happy", "sad"), ("glad", "angry"), ("calm", "upset"), ("kind", "cruel")]
TEMPLATE = "Pretend you are {}. Say something:"


@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_the_job_saves_the_directly_computed_vector(live_server: LiveServer, method: str) -> None:
    name = f"mood-{method.replace('_', '-')}-{secrets.token_hex(3)}"
    with Client(live_server.url) as client:
        job = client.contrast(name, PAIRS, layer=2, method=method, template=TEMPLATE,  # type: ignore[arg-type]
                              relation="mood")
        assert job.kind == "contrast"
        done = client.wait_for_job(job, timeout=120)
        assert done.state == "succeeded", done.error
        result = done.contrast_result
        assert result is not None and (result.vector, result.layer, result.n_pairs) == (name, 2, 4)
        info = client.get_vector(name)
        stored = load(client.export_vector(name, "safetensors"))["vector"]
        weight = min(1000.0, 60.0 / info.norm)  # a composite of norm 60: wide enough to move the tiny model
        steered = client.complete("Say something:", relations={name: weight}, max_new_tokens=6, return_baseline=True)
    assert (info.method, info.relation, info.layer) == ("contrast", "mood", 2)
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()  # the checkpoint the server loaded (same seed)
    made = contrast_vectors(adapt(model, tokenizer), tokenizer, [TEMPLATE.replace("{}", p) for p, _ in PAIRS],
                            [TEMPLATE.replace("{}", n) for _, n in PAIRS], ContrastOptions((2,), method))  # type: ignore[arg-type]
    torch.testing.assert_close(stored, made.vectors[2], rtol=1e-4, atol=1e-6)
    assert result.separation == made.separation[2]
    assert steered.steering is not None and steered.steering.digests() == {name: info.digest}
    assert steered.baseline is not None and steered.text != steered.baseline.text


def test_refusals_name_the_parameter(live_server: LiveServer) -> None:
    def post(**body: object) -> httpx.Response:
        base = {"name": f"bad-{secrets.token_hex(3)}", "pairs": [{"positive": "a", "negative": "b"}] * 2, "layer": 1}
        return httpx.post(f"{live_server.url}/vectors/contrast", json={**base, **body}, timeout=30)

    cases = [
        (post(layer=live_server.n_layers), "layer"),
        (post(pairs=[{"positive": "a", "negative": "b"}]), "pairs"),
        (post(template="no slot"), "template"),
        (post(method="ica"), "method"),
        (post(pairs=[{"positive": "", "negative": "b"}] * 2), "pairs.0.positive"),
        (post(name="bad name!"), "name"),
    ]
    for response, param in cases:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == param, response.json()


def test_the_cli_submits_follows_and_summarises(live_server: LiveServer, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"positive": p, "negative": n} for p, n in PAIRS]), encoding="utf-8")
    name = f"cli-mood-{secrets.token_hex(3)}"
    code = main(["--url", live_server.url, "contrast", name, "--pairs", str(pairs), "--layer", "1",
                 "--template", TEMPLATE, "--normalize", "unit"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert name in captured.out
    assert "of 4 pairs differ the vector's way" in captured.out
    assert httpx.get(f"{live_server.url}/vectors/{name}").json()["norm"] == pytest.approx(1.0, rel=1e-5)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    assert main(["--url", live_server.url, "contrast", "x", "--pairs", str(bad), "--layer", "1"]) == 2
    assert "--pairs" in capsys.readouterr().err
