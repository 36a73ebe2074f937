"""The fast paths against their references on the embedded SmolLM2-135M (marked ``model``): the AIE against one
forward per head (a few heads spread over the depth, two corrupted antonym prompts, all heads in one forward and
one layer per forward), and the one-pass layer sweep against one steered forward per layer."""

from __future__ import annotations

import random
from functools import cache

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from app.fv.activations import mean_head_outputs
from app.fv.evaluation import accuracy
from app.fv.forward import encode_left_padded, last_token_logits
from app.fv.mediation import ScoredPrompt, aie_fast, aie_reference
from app.fv.pairs import relation_pairs, split_pairs
from app.fv.prompts import Template, bos_prefix, icl_prompts, zero_shot_prompts
from app.fv.sweep import sweep_layers
from app.fv.vector import function_vector
from app.model.adapter import ModelAdapter, adapt
from app.model.loading import load_model
from app.model.steering import BatchSteering, steered
from app.settings import Settings

pytestmark = pytest.mark.model


@cache
def embedded() -> tuple[ModelAdapter, PreTrainedTokenizerBase]:
    loaded = load_model("embedded:smollm2-135m-instruct", "cpu", "float32", Settings().cache_dir)
    return adapt(loaded.model, loaded.tokenizer), loaded.tokenizer


def test_fast_aie_equals_the_reference_on_the_embedded_model() -> None:
    adapter, tokenizer = embedded()
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
    for head_batch in (512, 1):
        fast = aie_fast(adapter, prompts, means, heads, head_batch=head_batch)
        diff = float((fast - reference).abs().max())
        print(f"\nembedded model, head_batch={head_batch}: max |AIE fast - reference| = {diff:.2e}")
        assert diff <= 1e-4, (head_batch, diff)


def test_one_pass_layer_sweep_equals_a_steered_forward_per_layer_on_the_embedded_model() -> None:
    adapter, tokenizer = embedded()
    split = split_pairs(relation_pairs("antonym"), 0)
    prefix, rng = bos_prefix(tokenizer, adapter.adds_bos), random.Random(1)
    clean = icl_prompts(tokenizer, Template(), prefix, split.train, rng.sample(split.train, 8), rng)
    means = mean_head_outputs(adapter, tokenizer, [item.text for item in clean])
    antonym_heads = [(14, 1), (20, 5), (20, 0), (21, 1), (17, 3), (18, 6), (29, 6), (22, 5), (18, 7), (16, 2)]
    vector = function_vector(adapter, means, [(layer, head, 0.0) for layer, head in antonym_heads])
    items = zero_shot_prompts(tokenizer, Template(), prefix, split.valid + split.train[:12])
    layers = [0, 5, 9, 13, 21, adapter.n_layers - 1]
    swept = sweep_layers(adapter, tokenizer, items, vector, layers, batch_size=8)
    ids, mask = encode_left_padded(tokenizer, [item.text for item in items], torch.device("cpu"))
    at_last = torch.zeros(ids.shape, dtype=torch.bool)
    at_last[:, -1] = True
    for layer in layers:
        steering = BatchSteering({layer: vector.reshape(1, -1).expand(len(items), -1)}, at_last)
        with torch.inference_mode(), steered(adapter, steering):
            logits = last_token_logits(adapter, ids, mask)
        # Any accepted answer counts (several antonyms have more than one): the best accepted token's rank, and the
        # log of the accepted tokens' summed probability.
        log_probs = torch.log_softmax(logits, dim=-1)
        ranks = torch.stack([(row > row[list(item.answer_tokens)].max()).sum() for row, item in zip(logits, items,
                                                                                                      strict=True)])
        assert swept.top1[layer] == accuracy(ranks), layer
        expected = float(torch.stack([torch.logsumexp(row[list(item.answer_tokens)], dim=0)
                                      for row, item in zip(log_probs, items, strict=True)]).mean())
        assert abs(swept.log_prob[layer] - expected) <= 1e-4, (layer, swept.log_prob[layer], expected)
    spread = max(swept.log_prob.values()) - min(swept.log_prob.values())
    assert spread > 0.5, "the vector's layer changes nothing: the comparison would be vacuous"
