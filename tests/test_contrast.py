"""Contrastive control vectors on a tiny random model, against a direct computation from ``output_hidden_states``:
``mean_diff`` is the mean of the paired differences, ``pca`` the mean difference's part along their first principal
axis (signed the mean's way), ``unit`` normalises; bad input is refused by name."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from app.errors import InvalidInput
from app.fv.contrast import ContrastOptions, contrast_directions, contrast_vectors
from app.model.adapter import adapt
from tests.tiny_models import tiny_model, tiny_tokenizer

POSITIVES = ["I love this, it is wonderful", "What a great day", "Thank you so much", "This is the best"]
NEGATIVES = ["I hate this, it is awful", "What a terrible day", "Go away now", "This is the worst"]


@pytest.fixture(scope="module")
def model() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return tiny_model("llama"), tiny_tokenizer()


def direct(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], layer: int) -> torch.Tensor:
    """Block ``layer``'s output at the last token, one prompt at a time (no padding): ``hidden_states[layer + 1]``."""
    rows = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        rows.append(hidden[layer + 1][0, -1].double())
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["mean_diff", "pca"])
def test_vectors_equal_a_direct_computation(model: tuple[PreTrainedModel, PreTrainedTokenizerBase],
                                            method: str) -> None:
    net, tokenizer = model
    adapter = adapt(net, tokenizer)
    layers = (0, 2)  # not the last block: HF's last hidden state has the final norm applied
    made = contrast_vectors(adapter, tokenizer, POSITIVES, NEGATIVES,
                            ContrastOptions(layers, method=method, batch_size=3))  # type: ignore[arg-type]
    vectors = made.vectors
    assert sorted(vectors) == list(layers)
    for layer in layers:
        differences = direct(net, tokenizer, POSITIVES, layer) - direct(net, tokenizer, NEGATIVES, layer)
        mean = differences.mean(0)
        if method == "mean_diff":
            expected = mean
        else:
            axis = torch.linalg.svd(differences - mean, full_matrices=False).Vh[0]
            expected = (mean @ axis) * axis
            assert float(vectors[layer].double() @ mean) > 0  # it points the way the pairs differ
        torch.testing.assert_close(vectors[layer].double(), expected, rtol=1e-4, atol=1e-5)
        agree = float(((differences @ vectors[layer].double()) > 0).double().mean())
        assert made.separation[layer] == agree and agree > 0  # Σᵢ dᵢ · v > 0 for either method


def test_unit_normalisation_and_identical_differences() -> None:
    positive = torch.randn(3, 2, 8, dtype=torch.float64)
    shift = torch.randn(2, 8, dtype=torch.float64)
    negative = positive - shift  # every pair differs by the same vector
    for method in ("mean_diff", "pca"):
        same = contrast_directions(positive, negative, method)  # type: ignore[arg-type]
        torch.testing.assert_close(same.double(), shift, rtol=1e-5, atol=1e-6)
        unit = contrast_directions(positive, negative, method, "unit")  # type: ignore[arg-type]
        torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))


def test_refusals_name_the_parameter(model: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    net, tokenizer = model
    adapter = adapt(net, tokenizer)
    cases = [
        (lambda: contrast_vectors(adapter, tokenizer, POSITIVES, NEGATIVES[:2], ContrastOptions((1,))), "negatives"),
        (lambda: contrast_vectors(adapter, tokenizer, POSITIVES, NEGATIVES, ContrastOptions((adapter.n_layers,))),
         "layers"),
        (lambda: contrast_vectors(adapter, tokenizer, POSITIVES[:1], NEGATIVES[:1], ContrastOptions((1,), "pca")),
         "pairs"),
    ]
    for call, param in cases:
        with pytest.raises(InvalidInput) as refused:
            call()
        assert refused.value.param == param
