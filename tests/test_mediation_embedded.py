"""The fast AIE against the one-forward-per-head oracle on the embedded SmolLM2-135M (marked ``model``): a few heads
spread over the depth, two corrupted antonym prompts, the default chunking and one layer per forward."""

from __future__ import annotations

import random

import pytest

from app.fv.activations import mean_head_outputs
from app.fv.mediation import ScoredPrompt, aie_fast, aie_reference
from app.fv.pairs import relation_pairs, split_pairs
from app.fv.prompts import Template, bos_prefix, icl_prompts
from app.model.adapter import adapt
from app.model.loading import load_model
from app.settings import Settings

pytestmark = pytest.mark.model


def test_fast_aie_equals_the_reference_on_the_embedded_model() -> None:
    loaded = load_model("embedded:smollm2-135m-instruct", "cpu", "float32", Settings().cache_dir)
    adapter, tokenizer = adapt(loaded.model, loaded.tokenizer), loaded.tokenizer
    split = split_pairs(relation_pairs("antonym"), 0)
    prefix, template, rng = bos_prefix(tokenizer, adapter.adds_bos), Template(), random.Random(0)
    clean = icl_prompts(tokenizer, template, prefix, split.train, rng.sample(split.train, 8), rng)
    means = mean_head_outputs(adapter, tokenizer, [item.text for item in clean])
    corrupted = icl_prompts(tokenizer, template, prefix, split.train, rng.sample(split.train, 2), rng,
                            shuffle_labels=True)
    prompts = [ScoredPrompt(tokenizer(item.text).input_ids, item.answer_token) for item in corrupted]
    last = adapter.n_layers - 1
    heads = [(0, 0), (3, 4), (12, 1), (15, 8), (last - 1, 2), (last, 5)]
    reference = aie_reference(adapter, prompts, means, heads)
    assert float(reference.abs().max()) > 1e-5, "no head has an effect: the comparison would be vacuous"
    for head_batch in (64, 1):
        fast = aie_fast(adapter, prompts, means, heads, head_batch=head_batch)
        diff = float((fast - reference).abs().max())
        print(f"\nembedded model, head_batch={head_batch}: max |AIE fast - reference| = {diff:.2e}")
        assert diff <= 1e-4, (head_batch, diff)
