"""One table that tells, for each architecture, where the parts fvsteer touches live.

Steering adds to the output of a decoder block; extraction reads the input of the attention
out-projection per head; decoding runs the final norm and the LM head. Everything else in the
project goes through :class:`ModelAdapter`, never through architecture-specific attribute names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakSet

from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ArchitectureLayout:
    """Where one family keeps its blocks, attention out-projection and final norm (the LM head is
    ``get_output_embeddings()`` everywhere)."""

    blocks: Callable[[Any], nn.ModuleList]
    out_proj: Callable[[Any], nn.Module]
    final_norm: Callable[[Any], nn.Module]


_LLAMA_LIKE = ArchitectureLayout(
    blocks=lambda m: m.model.layers,
    out_proj=lambda block: block.self_attn.o_proj,
    final_norm=lambda m: m.model.norm,
)

ARCHITECTURES: dict[str, ArchitectureLayout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gpt2": ArchitectureLayout(
        blocks=lambda m: m.transformer.h,
        out_proj=lambda block: block.attn.c_proj,
        final_norm=lambda m: m.transformer.ln_f,
    ),
    "gpt_neox": ArchitectureLayout(
        blocks=lambda m: m.gpt_neox.layers,
        out_proj=lambda block: block.attention.dense,
        final_norm=lambda m: m.gpt_neox.final_layer_norm,
    ),
    "gptj": ArchitectureLayout(
        blocks=lambda m: m.transformer.h,
        out_proj=lambda block: block.attn.out_proj,
        final_norm=lambda m: m.transformer.ln_f,
    ),
}


class UnsupportedArchitecture(ValueError):
    """The model's ``config.model_type`` has no row in :data:`ARCHITECTURES`."""


@dataclass(frozen=True)
class ModelAdapter:
    """The parts of one loaded causal LM that fvsteer uses, with its shape facts."""

    model: PreTrainedModel
    model_type: str
    blocks: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    n_layers: int
    n_heads: int
    head_dim: int
    d_model: int
    adds_bos: bool

    def out_proj(self, layer: int) -> nn.Module:
        """The attention out-projection of block ``layer`` (its input holds the per-head outputs)."""
        return ARCHITECTURES[self.model_type].out_proj(self.blocks[layer])


def _config_value(config: object, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise UnsupportedArchitecture(f"config has none of {names}")


def tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether encoding text puts the BOS token first (prompts of models that don't get BOS text prepended)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return len(ids) > 0 and ids[0] == bos


def _contiguous_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A forward pre-hook of the LM head: its input, contiguous.

    With ``logits_to_keep=1`` (every prefill and most FV forwards) transformers hands the head
    ``hidden[:, -1:, :]``, a strided view of a multi-token forward, and torch's ``linear`` then runs a batched
    matmul over the weight expanded once per row: 12× slower than a plain matmul at 499 rows, 4× at 16
    (2 CPU cores, SmolLM2's 49,152 × 576 head). Copying one position per row costs next to nothing.
    """
    first = args[0] if args else None
    if isinstance(first, Tensor) and not first.is_contiguous():
        return (first.contiguous(), *args[1:])
    return args


_HEADS_MADE_CONTIGUOUS: WeakSet[nn.Module] = WeakSet()


def adapt(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> ModelAdapter:
    """Build the adapter of ``model`` (and give its LM head contiguous inputs, once); raises
    :class:`UnsupportedArchitecture` for families not in the table."""
    config = model.config
    model_type = str(config.model_type)
    layout = ARCHITECTURES.get(model_type)
    if layout is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedArchitecture(f"architecture {model_type!r} is not supported; supported: {supported}")
    d_model = _config_value(config, "hidden_size", "n_embd", "d_model")
    n_heads = _config_value(config, "num_attention_heads", "n_head")
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    blocks = layout.blocks(model)
    lm_head: nn.Module = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    if lm_head not in _HEADS_MADE_CONTIGUOUS:
        lm_head.register_forward_pre_hook(_contiguous_input)
        _HEADS_MADE_CONTIGUOUS.add(lm_head)
    return ModelAdapter(
        model=model,
        model_type=model_type,
        blocks=blocks,
        final_norm=layout.final_norm(model),
        lm_head=lm_head,
        n_layers=len(blocks),
        n_heads=n_heads,
        head_dim=int(head_dim),
        d_model=d_model,
        adds_bos=tokenizer_adds_bos(tokenizer),
    )
