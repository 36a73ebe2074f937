"""The architecture table: every supported family resolves to the right modules and shape facts."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from app.model.adapter import ARCHITECTURES, ModelAdapter, UnsupportedArchitecture, adapt, tokenizer_adds_bos
from tests.tiny_models import ARCH_CONFIGS, VOCAB_SIZE, tiny_model, tiny_tokenizer

# Tiny models run faster on one thread, and much faster when other processes share the cores.

ARCHS = sorted(ARCH_CONFIGS)
PROMPT = "Q: hot\nA: cold"


@functools.cache
def _model(arch: str) -> PreTrainedModel:
    return tiny_model(arch)


def _adapter(arch: str) -> ModelAdapter:
    return adapt(_model(arch), tiny_tokenizer())


def _ids() -> Tensor:
    return torch.tensor([tiny_tokenizer()(PROMPT).input_ids])


def _hidden(output: Any) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def test_every_tiny_architecture_is_in_the_table() -> None:
    assert set(ARCH_CONFIGS) <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_shape_facts_match_the_config(arch: str) -> None:
    spec = ARCH_CONFIGS[arch]

    def value(*names: str, default: int | None = None) -> int:
        found = next((spec[name] for name in names if name in spec), default)
        assert isinstance(found, int), names
        return found

    d_model = value("hidden_size", "n_embd")
    n_heads = value("num_attention_heads", "n_head")
    n_layers = value("num_hidden_layers", "n_layer")
    head_dim = value("head_dim", default=d_model // n_heads)
    adapter = _adapter(arch)
    assert adapter.model_type == arch
    assert (adapter.n_layers, adapter.n_heads, adapter.head_dim, adapter.d_model) == (
        n_layers, n_heads, head_dim, d_model,
    )
    assert adapter.n_layers == len(adapter.blocks)
    assert isinstance(adapter.blocks, nn.ModuleList)


def test_head_dim_comes_from_the_config_when_it_differs_from_hidden_over_heads() -> None:
    # gemma's tiny config has head_dim 16 with hidden 32 and 4 heads: hidden/heads would say 8.
    adapter = _adapter("gemma")
    assert adapter.head_dim == 16
    assert adapter.head_dim * adapter.n_heads != adapter.d_model


@pytest.mark.parametrize("arch", ARCHS)
def test_out_proj_input_holds_every_head(arch: str) -> None:
    adapter = _adapter(arch)
    shapes: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    handles = []
    for layer in range(adapter.n_layers):
        module = adapter.out_proj(layer)
        assert any(sub is module for sub in adapter.blocks[layer].modules()), "the projection lives in its block"

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Tensor, layer: int = layer) -> None:
            shapes[layer] = (tuple(args[0].shape), tuple(output.shape))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            adapter.model(_ids())
    finally:
        for handle in handles:
            handle.remove()
    seq = _ids().shape[1]
    assert sorted(shapes) == list(range(adapter.n_layers)), "every block's out-projection runs once"
    for inputs, outputs in shapes.values():
        assert inputs == (1, seq, adapter.n_heads * adapter.head_dim)
        assert outputs == (1, seq, adapter.d_model)


@pytest.mark.parametrize("arch", ARCHS)
def test_out_proj_is_the_attention_output_projection(arch: str) -> None:
    adapter = _adapter(arch)
    names = {id(module): name for name, module in adapter.model.named_modules()}
    name = names[id(adapter.out_proj(0))]
    assert name.rsplit(".", 1)[-1] in {"o_proj", "out_proj", "c_proj", "dense"}
    assert "att" in name.rsplit(".", 2)[-2], name
    # Its input mixes positions (attention-weighted values), unlike the q/k/v projections of block 0,
    # whose input at a position depends on that position's token only.
    inputs: list[Tensor] = []
    handle = adapter.out_proj(0).register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    ids = _ids()
    changed = ids.clone()
    changed[0, 0] = (int(ids[0, 0]) + 7) % VOCAB_SIZE
    try:
        with torch.no_grad():
            adapter.model(ids)
            adapter.model(changed)
    finally:
        handle.remove()
    assert not torch.allclose(inputs[0][0, -1], inputs[1][0, -1])


@pytest.mark.parametrize("arch", ARCHS)
def test_final_norm_and_lm_head_reproduce_the_logits(arch: str) -> None:
    adapter = _adapter(arch)
    captured: dict[str, Any] = {}
    handles = [
        adapter.blocks[-1].register_forward_hook(lambda mod, args, out: captured.update(last=out)),
        adapter.final_norm.register_forward_hook(lambda mod, args, out: captured.update(norm=out)),
        adapter.lm_head.register_forward_pre_hook(lambda mod, args: captured.update(head_in=args[0])),
    ]
    try:
        with torch.no_grad():
            logits = adapter.model(_ids()).logits
    finally:
        for handle in handles:
            handle.remove()
    # The final norm is the module whose output the LM head reads.
    assert torch.equal(captured["norm"], captured["head_in"])
    with torch.no_grad():
        decoded = adapter.lm_head(adapter.final_norm(_hidden(captured["last"])))
    softcap = getattr(adapter.model.config, "final_logit_softcapping", None)
    if softcap:  # gemma2 squashes its logits after the LM head
        decoded = torch.tanh(decoded / softcap) * softcap
    assert decoded.shape == logits.shape == (1, _ids().shape[1], VOCAB_SIZE)
    torch.testing.assert_close(decoded, logits, rtol=1e-5, atol=1e-5)
    # The final norm is a norm, not the identity: decoding the raw block output does not give the logits.
    assert not torch.allclose(adapter.lm_head(_hidden(captured["last"])), logits, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_lm_head_is_the_output_embedding(arch: str) -> None:
    adapter = _adapter(arch)
    assert adapter.lm_head is adapter.model.get_output_embeddings()
    assert adapter.lm_head.weight.shape == (VOCAB_SIZE, adapter.d_model)
    assert all(adapter.final_norm is not block for block in adapter.blocks)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_lm_head_gets_a_contiguous_input_once_per_model(arch: str) -> None:
    """``logits_to_keep=1`` slices the last position out of a multi-token forward; the head must get it contiguous
    (a strided input makes torch's linear a per-row batched matmul), with the logits unchanged."""
    model = tiny_model(arch)
    hooks_before = len(model.get_output_embeddings()._forward_pre_hooks)
    adapter = adapt(model, tiny_tokenizer())
    adapt(model, tiny_tokenizer())  # a second adapter of the same model adds no second hook
    assert len(adapter.lm_head._forward_pre_hooks) == hooks_before + 1
    seen: list[Tensor] = []
    handle = adapter.lm_head.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    ids = torch.tensor([tiny_tokenizer()(text).input_ids[:4] for text in (PROMPT, "Q: up\nA: down")])
    try:
        with torch.no_grad():
            last = adapter.model(ids, logits_to_keep=1).logits
            full = adapter.model(ids).logits
    finally:
        handle.remove()
    assert seen[0].shape == (2, 1, adapter.d_model) and seen[0].is_contiguous()
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=1e-5, atol=1e-5)


def test_adds_bos_follows_the_tokenizer() -> None:
    with_bos = tiny_tokenizer(add_bos=True)
    without_bos = tiny_tokenizer()
    assert with_bos("a").input_ids[0] == with_bos.bos_token_id
    assert tokenizer_adds_bos(with_bos) is True
    assert tokenizer_adds_bos(without_bos) is False
    model = _model("llama")
    assert adapt(model, with_bos).adds_bos is True
    assert adapt(model, without_bos).adds_bos is False


def test_a_tokenizer_without_a_bos_token_does_not_add_one() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None
    assert tokenizer_adds_bos(tokenizer) is False


def test_unsupported_architecture_is_refused_with_the_supported_list() -> None:
    config = AutoConfig.for_model(
        "opt", vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        word_embed_proj_dim=16, max_position_embeddings=64,
    )
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(UnsupportedArchitecture) as info:
        adapt(model, tiny_tokenizer())
    message = str(info.value)
    assert "'opt'" in message and "not supported" in message
    for arch in ARCHITECTURES:
        assert arch in message
    assert isinstance(info.value, ValueError)
