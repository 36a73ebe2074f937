"""Contrastive control vectors: per layer, the direction in the residual stream that separates two kinds of prompt.

For prompt pairs ``(positive_i, negative_i)`` let ``h_l(x)`` be block ``l``'s output at ``x``'s last token and
``d_i = h_l(positive_i) − h_l(negative_i)``:

- ``mean_diff`` (contrastive activation addition): ``v_l = mean_i d_i``.
- ``pca`` (repeng's ``pca_diff``): the first principal component of the ``d_i`` (centred, as PCA does), signed so
  that the mean difference projects positively on it and scaled to that projection, ``(mean_i d_i · u) u``: the
  part of the mean difference along the pairs' main axis of variation.

``normalize="unit"`` rescales each layer's vector to norm 1 (repeng's convention: the request's weight then sets the
size); ``"none"`` keeps the size the activations give, so that weight 1 moves a prompt as far as the pairs differ.
llama.cpp's ``cvector-generator`` offers the same two families (``mean`` and ``pca``): the vectors are one kind of
object, which :mod:`app.registry.control_vector` moves between the tools. Not yet a job: the HTTP route, progress
events and the layer sweep are issue 34's next step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.errors import InvalidInput
from app.fv.forward import encode_left_padded, last_token_logits, model_device
from app.fv.options import ContrastMethod, Normalization
from app.fv.ragged import captured_block_outputs
from app.model.adapter import ModelAdapter
from app.model.runner import Runner, run_here

MIN_PAIRS = {"mean_diff": 1, "pca": 2}


@dataclass(frozen=True)
class ContrastOptions:
    layers: tuple[int, ...]
    method: ContrastMethod = "mean_diff"
    normalize: Normalization = "none"
    batch_size: int = 8


def last_token_residuals(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                         layers: Sequence[int], *, batch_size: int = 8, run: Runner[Any] = run_here,
                         on_batch: Callable[[int, int], None] | None = None) -> Tensor:
    """Block outputs at each prompt's last token: ``[len(prompts), len(layers), d_model]``, float64 on the CPU."""
    device = model_device(adapter)
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])

        def forward(chunk: list[str] = chunk) -> Tensor:
            captured: list[Any] = [None] * adapter.n_layers
            ids, mask = encode_left_padded(tokenizer, chunk, device)
            with torch.inference_mode(), captured_block_outputs(adapter, captured):
                last_token_logits(adapter, ids, mask)
            outputs = [captured[layer][0] if isinstance(captured[layer], tuple) else captured[layer]
                       for layer in layers]
            return torch.stack([output[:, -1, :] for output in outputs], dim=1).double().cpu()

        rows.append(run(forward))
        if on_batch is not None:
            on_batch(min(start + batch_size, len(prompts)), len(prompts))
    return torch.cat(rows)


def contrast_directions(positive: Tensor, negative: Tensor, method: ContrastMethod = "mean_diff",
                        normalize: Normalization = "none") -> Tensor:
    """``[n_layers, d_model]`` float32 from paired residuals ``[n, n_layers, d_model]`` (row i of each: pair i)."""
    if positive.shape != negative.shape or positive.ndim != 3:
        raise ValueError(f"paired residuals must share one [n, layers, d] shape: {positive.shape} vs {negative.shape}")
    n = positive.shape[0]
    if n < MIN_PAIRS[method]:
        raise InvalidInput(f"{method} needs at least {MIN_PAIRS[method]} pairs; {n} given", param="pairs")
    differences = (positive - negative).double()
    mean = differences.mean(0)  # [layers, d]
    if method == "mean_diff":
        vectors = mean
    else:
        vectors = torch.stack([_principal_part(differences[:, layer], mean[layer])
                               for layer in range(differences.shape[1])])
    if normalize == "unit":
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return vectors.float()


def _principal_part(differences: Tensor, mean: Tensor) -> Tensor:
    """The mean difference's component along the first principal axis of ``differences`` ``[n, d]``."""
    centred = differences - mean
    if float(centred.norm()) <= 1e-9 * float(mean.norm()) * differences.shape[0]:
        return mean  # every pair differs alike (up to rounding): the mean is the only direction there is
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axis = vh[0]
    direction: Tensor = float(mean @ axis) * axis  # signed by the projection: the way the mean difference points
    return direction


@dataclass(frozen=True)
class Contrast:
    """Layer → direction ``[d_model]``, and per layer the fraction of pairs whose difference points the direction's
    way (``d_i · v_l > 0``; measured on the pairs the vector was made from)."""

    vectors: dict[int, Tensor]
    separation: dict[int, float]


def contrast_vectors(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, positives: Sequence[str],
                     negatives: Sequence[str], options: ContrastOptions, *, run: Runner[Any] = run_here,
                     on_batch: Callable[[int, int], None] | None = None) -> Contrast:
    """Control directions for prompt pairs (positives[i] against negatives[i]) at ``options.layers``."""
    if len(positives) != len(negatives):
        raise InvalidInput(f"{len(positives)} positive and {len(negatives)} negative prompts: they must pair up",
                           param="negatives")
    for layer in options.layers:
        if not 0 <= layer < adapter.n_layers:
            raise InvalidInput(f"layer {layer} is outside the model's 0..{adapter.n_layers - 1}", param="layers")
    total = 2 * len(positives)

    def progress(done: int, _: int, offset: int = 0) -> None:
        if on_batch is not None:
            on_batch(offset + done, total)

    kept = sorted(set(options.layers))
    pos = last_token_residuals(adapter, tokenizer, positives, kept, batch_size=options.batch_size, run=run,
                               on_batch=progress)
    neg = last_token_residuals(adapter, tokenizer, negatives, kept, batch_size=options.batch_size, run=run,
                               on_batch=lambda done, n: progress(done, n, len(positives)))
    directions = contrast_directions(pos, neg, options.method, options.normalize)
    agree = ((pos - neg) * directions.double()).sum(-1) > 0  # [n, layers]
    return Contrast({layer: directions[index] for index, layer in enumerate(kept)},
                    {layer: float(agree[:, index].double().mean()) for index, layer in enumerate(kept)})
