"""Building a function vector from head means (Todd et al., ICLR 2024) and decoding one through the logit lens.

Each chosen head's mean output is placed in its slice of an otherwise zero input of that layer's
out-projection; the projection's output, minus the projection of zero (its bias, if any), is the head's
contribution. So a projection bias is never added: the vector holds the heads' contributions only.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.fv.forward import model_device
from app.model.adapter import ModelAdapter


def head_contribution(adapter: ModelAdapter, means: Tensor, layer: int, head: int) -> Tensor:
    """What head ``(layer, head)``'s mean output adds to the residual stream: ``[d_model]``."""
    projection = adapter.out_proj(layer)
    weight = next(projection.parameters())
    width = adapter.n_heads * adapter.head_dim
    inputs = torch.zeros(2, width, device=weight.device, dtype=weight.dtype)
    inputs[0, head * adapter.head_dim : (head + 1) * adapter.head_dim] = means[layer, head].to(weight.dtype)
    with torch.no_grad():
        out = projection(inputs.unsqueeze(0))[0].float()
    contribution: Tensor = (out[0] - out[1]).cpu()
    return contribution


def function_vector(adapter: ModelAdapter, means: Tensor, heads: list[tuple[int, int, float]]) -> Tensor:
    """``FV = Σ_{(l,h) in heads} W_O^l[:, h] · ā[l, h]`` as float32 ``[d_model]``."""
    total = torch.zeros(adapter.d_model)
    for layer, head, _ in heads:
        total += head_contribution(adapter, means, layer, head)
    return total


def decode_vector(
    adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, vector: Tensor, k: int = 10
) -> list[tuple[str, float]]:
    """Logit lens: the top ``k`` tokens of ``softmax(lm_head(final_norm(v)))`` with their probabilities."""
    device = model_device(adapter)
    dtype = next(adapter.lm_head.parameters()).dtype
    with torch.inference_mode():
        hidden = adapter.final_norm(vector.to(device, dtype).reshape(1, 1, -1))
        logits = adapter.lm_head(hidden)[0, 0].float()
        if getattr(adapter.model.config, "final_logit_softcapping", None):
            cap = float(adapter.model.config.final_logit_softcapping)
            logits = torch.tanh(logits / cap) * cap
    probs = torch.softmax(logits, dim=-1)
    values, ids = torch.topk(probs, k)
    return [(str(tokenizer.decode([int(i)])), float(v)) for v, i in zip(values, ids, strict=True)]
