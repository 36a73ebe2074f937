"""Head activations and causal mediation: the fast AIE against the one-forward-per-head oracle, the patching
hook, top-k heads, and batch-invariant mean head outputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
import torch
from torch import Tensor

from app.fv.activations import capture_last_token_heads, mean_head_outputs
from app.fv.mediation import (
    ScoredPrompt,
    aie_fast,
    aie_reference,
    all_heads,
    layer_chunks,
    patched_heads,
    top_heads,
)
from app.model.adapter import ModelAdapter, adapt
from tests.tiny_models import ARCH_CONFIGS, tiny_model, tiny_tokenizer

TOKENIZER = tiny_tokenizer()
CLEAN = [
    "<s>Q: hot\nA: cold\n\nQ: up\nA: down\n\nQ: big\nA:",
    "<s>Q: a\nA:",
    "<s>Q: left\nA: right\n\nQ: in\nA:",
    "<s>Q: wet\nA: dry\n\nQ: fast\nA: slow\n\nQ: old\nA: new\n\nQ: day\nA:",
    "<s>Q: yes\nA: no\n\nQ: on\nA:",
]
CORRUPTED = [  # different lengths, each with its own answer
    ("<s>Q: hot\nA: down\n\nQ: up\nA: cold\n\nQ: big\nA:", " small"),
    ("<s>Q: x\nA:", " y"),
    ("<s>Q: wet\nA: slow\n\nQ: fast\nA: new\n\nQ: old\nA: dry\n\nQ: day\nA:", " night"),
]

# Largest |AIE fast - AIE reference| seen per architecture (printed with -s; see the module's last test).
MAX_DIFF: dict[str, float] = {}


@cache
def adapter_of(arch: str) -> ModelAdapter:
    return adapt(tiny_model(arch, seed=1), TOKENIZER)


def scored_prompts() -> list[ScoredPrompt]:
    return [ScoredPrompt(TOKENIZER(text).input_ids, TOKENIZER(answer, add_special_tokens=False).input_ids[0])
            for text, answer in CORRUPTED]


@cache
def means_of(arch: str) -> Tensor:
    return mean_head_outputs(adapter_of(arch), TOKENIZER, CLEAN, batch_size=2)


def pre_hook_count(adapter: ModelAdapter) -> int:
    return sum(len(adapter.out_proj(layer)._forward_pre_hooks) for layer in range(adapter.n_layers))


# --- AIE: fast vs reference ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_fast_aie_equals_the_reference(arch: str) -> None:
    adapter = adapter_of(arch)
    means, prompts = means_of(arch), scored_prompts()
    reference = aie_reference(adapter, prompts, means)
    assert reference.shape == (adapter.n_layers, adapter.n_heads)
    assert reference.abs().max() > 1e-4, "the oracle sees no effect at all: the comparison would be vacuous"
    worst = 0.0
    # 4 layers of 4 heads: one layer per forward (every block under it replayed), two, three + one, all at once.
    for head_batch in (1, 8, 12, 96):
        fast = aie_fast(adapter, prompts, means, head_batch=head_batch)
        diff = float((fast - reference).abs().max())
        worst = max(worst, diff)
        assert diff < 1e-4, (arch, head_batch, diff)
        assert diff <= 1e-3 * float(reference.abs().max()), (arch, head_batch, diff)
    MAX_DIFF[arch] = worst


def test_fast_aie_on_a_subset_of_heads() -> None:
    adapter = adapter_of("llama")
    means, prompts = means_of("llama"), scored_prompts()
    heads = [(3, 1), (0, 2), (2, 0)]
    fast = aie_fast(adapter, prompts, means, heads, head_batch=2)
    reference = aie_reference(adapter, prompts, means, heads)
    assert float((fast - reference).abs().max()) < 1e-4
    mask = torch.zeros_like(fast, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    assert torch.all(fast[~mask] == 0) and torch.all(fast[mask] != 0)
    full = aie_fast(adapter, prompts, means)
    assert torch.allclose(full[mask], fast[mask], atol=1e-6)


def test_fast_aie_reports_progress_and_runs_through_the_runner() -> None:
    adapter = adapter_of("llama")
    calls: list[int] = []
    steps: list[tuple[int, int]] = []

    def run(fn: Callable[[], Any]) -> Any:
        calls.append(1)
        return fn()

    aie_fast(adapter, scored_prompts(), means_of("llama"), head_batch=8, run=run,
             on_prompt=lambda step, total: steps.append((step, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert len(calls) == 3 * (1 + 2)  # one full forward + two chunks of two layers per prompt
    assert pre_hook_count(adapter) == 0


def test_layer_chunks_keep_layers_whole_top_first() -> None:
    heads = [(layer, head) for layer in range(4) for head in range(3)]
    assert [chunk.heads for chunk in layer_chunks(heads, 1)] == [
        [(layer, 0), (layer, 1), (layer, 2)] for layer in (3, 2, 1, 0)]
    chunks = layer_chunks(heads, 7)
    assert [chunk.first_layer for chunk in chunks] == [2, 0]
    assert chunks[0].heads == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]  # bottom layer first inside
    assert chunks[0].entries == [2, 2, 2, 3, 3, 3]
    assert [len(chunk.heads) for chunk in chunks] == [6, 6]
    assert sorted(head for chunk in layer_chunks(heads, 5) for head in chunk.heads) == heads
    assert [chunk.first_layer for chunk in layer_chunks([(0, 1), (2, 0), (2, 2)], 100)] == [0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_blocks_below_a_chunk_are_replayed_not_run_and_restored(arch: str) -> None:
    """Heads of the top layer only: after the full forward, no block below it runs; every block's own forward
    is back afterwards, even when the forward fails."""
    adapter = adapter_of(arch)
    top = adapter.n_layers - 1
    calls = [0] * adapter.n_layers
    handles = [adapter.out_proj(layer).register_forward_pre_hook(
        lambda module, args, layer=layer: calls.__setitem__(layer, calls[layer] + 1)) for layer in range(top + 1)]
    try:
        aie_fast(adapter, scored_prompts(), means_of(arch), [(top, 0), (top, 2)])
    finally:
        for handle in handles:
            handle.remove()
    n_prompts = len(CORRUPTED)
    assert calls[:top] == [n_prompts] * top  # the full forward only
    assert calls[top] == 2 * n_prompts
    assert all("forward" not in block.__dict__ for block in adapter.blocks)

    runs: list[bool] = []  # for each forward raised in: were the blocks below replaced at that moment?

    def counting(fn: Callable[[], Any]) -> Any:
        runs.append(False)
        return fn()

    def boom(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if len(runs) > 1:  # a chunk's forward, not the full one
            runs[-1] = "forward" in adapter.blocks[0].__dict__
            raise RuntimeError("boom")

    handle = adapter.out_proj(top).register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            aie_fast(adapter, scored_prompts(), means_of(arch), [(top, 0)], run=counting)
    finally:
        handle.remove()
    assert runs == [False, True]
    assert all("forward" not in block.__dict__ for block in adapter.blocks)
    assert pre_hook_count(adapter) == 0


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_each_block_runs_only_the_heads_at_or_below_it(arch: str) -> None:
    """One chunk with heads at layers 0, 2 and 3: in its forward block 0 and 1 run one position, block 2 two and
    block 3 three (the rest come from the recorded unpatched output), and the AIE still equals the oracle's."""
    adapter = adapter_of(arch)
    heads = [(3, 1), (0, 2), (2, 0)]
    widths: list[list[int]] = [[] for _ in range(adapter.n_layers)]
    handles = [adapter.out_proj(layer).register_forward_pre_hook(
        lambda module, args, layer=layer: widths[layer].append(args[0].shape[1])) for layer in range(adapter.n_layers)]
    try:
        fast = aie_fast(adapter, scored_prompts()[:1], means_of(arch), heads)
    finally:
        for handle in handles:
            handle.remove()
    length = len(scored_prompts()[0].ids)
    assert [seen for seen in widths] == [[length, 1], [length, 1], [length, 2], [length, 3]]
    reference = aie_reference(adapter, scored_prompts()[:1], means_of(arch), heads)
    assert float((fast - reference).abs().max()) < 1e-4
    assert all("forward" not in block.__dict__ for block in adapter.blocks)


def test_mean_patch_of_the_clean_prompt_itself_has_no_effect() -> None:
    """Patching a head with its own value (means of exactly this prompt) must leave p unchanged."""
    adapter = adapter_of("llama")
    text, answer = CORRUPTED[0]
    means = mean_head_outputs(adapter, TOKENIZER, [text])
    prompt = ScoredPrompt(TOKENIZER(text).input_ids, TOKENIZER(answer, add_special_tokens=False).input_ids[0])
    assert float(aie_fast(adapter, [prompt], means).abs().max()) < 1e-6
    assert float(aie_reference(adapter, [prompt], means).abs().max()) < 1e-6


# --- the patching hook ---------------------------------------------------------------------------------


def capture_inputs(adapter: ModelAdapter) -> tuple[list[Tensor], Callable[[], None]]:
    """Record the full input of every out-projection (registered last, so it sees what the patch made)."""
    captured: list[Tensor] = [torch.empty(0)] * adapter.n_layers
    handles = []
    for layer in range(adapter.n_layers):

        def hook(module: torch.nn.Module, args: tuple[Any, ...], layer: int = layer) -> None:
            captured[layer] = args[0].detach().clone()

        handles.append(adapter.out_proj(layer).register_forward_pre_hook(hook))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return captured, remove


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patched_heads_changes_exactly_the_chosen_slices(arch: str) -> None:
    adapter = adapter_of(arch)
    means = means_of(arch) + 5.0  # far from any real activation, so a patched slice is unmistakable
    ids = torch.tensor([TOKENIZER(CLEAN[0]).input_ids] * 4)
    hooks_before = pre_hook_count(adapter)
    captured, remove = capture_inputs(adapter)
    try:
        with torch.inference_mode():
            adapter.model(input_ids=ids)
    finally:
        remove()
    baseline = captured
    rows: list[tuple[int, int] | None] = [None, (2, 1), (2, 3), (1, 0)]
    with torch.inference_mode(), patched_heads(adapter, rows, means):
        captured, remove = capture_inputs(adapter)  # registered after the patch hooks: sees their result
        try:
            adapter.model(input_ids=ids)
        finally:
            remove()
    d = adapter.head_dim
    # Layer 0 sees nothing patched; layer 1 only row 3's head 0, last position.
    assert torch.equal(captured[0], baseline[0])
    expected = baseline[1].clone()
    expected[3, -1, 0:d] = means[1, 0]
    assert torch.equal(captured[1], expected)
    # Layer 2: rows 0-2 are unaffected upstream; rows 1 and 2 get their own head, nothing else.
    for row in range(3):
        want = baseline[2][row].clone()
        chosen = rows[row]
        if chosen is not None:
            want[-1, chosen[1] * d : (chosen[1] + 1) * d] = means[2, chosen[1]]
        assert torch.equal(captured[2][row], want), row
    assert not torch.equal(captured[2][3], baseline[2][3])  # row 3 was patched upstream at layer 1
    # Row 0 (no patch) is bit-for-bit unchanged everywhere; patched rows differ downstream.
    for layer in range(adapter.n_layers):
        assert torch.equal(captured[layer][0], baseline[layer][0])
    assert not torch.equal(captured[3][1], baseline[3][1])
    assert pre_hook_count(adapter) == hooks_before


def test_patched_heads_removes_its_hooks_even_on_error() -> None:
    adapter = adapter_of("llama")
    before = pre_hook_count(adapter)
    with pytest.raises(RuntimeError), patched_heads(adapter, [(0, 0), (3, 3), None], means_of("llama")):
        assert pre_hook_count(adapter) == before + 2
        raise RuntimeError("boom")
    assert pre_hook_count(adapter) == before
    ids = torch.tensor([TOKENIZER(CLEAN[1]).input_ids])
    with torch.inference_mode():
        first = adapter.model(input_ids=ids).logits
        with patched_heads(adapter, [(3, 3)], means_of("llama") + 5.0):
            patched = adapter.model(input_ids=ids).logits
        after = adapter.model(input_ids=ids).logits
    assert not torch.equal(first[0, -1], patched[0, -1])
    assert torch.equal(first[0, :-1], patched[0, :-1])  # earlier positions untouched
    assert torch.equal(first, after)


# --- top-k ---------------------------------------------------------------------------------------------


def test_top_heads_ordering() -> None:
    aie = torch.zeros(4, 5)
    aie[2, 3], aie[0, 4], aie[3, 0], aie[1, 1] = 0.9, 0.5, 0.7, -0.2
    aie[0, 0] = -1.0
    top = top_heads(aie, 3)
    assert [(layer, head) for layer, head, _ in top] == [(2, 3), (3, 0), (0, 4)]
    assert [value for _, _, value in top] == pytest.approx([0.9, 0.7, 0.5])
    assert all(isinstance(layer, int) and isinstance(head, int) for layer, head, _ in top)
    everything = top_heads(aie, 20)
    assert len(everything) == 20
    values = [value for _, _, value in everything]
    assert values == sorted(values, reverse=True)
    assert (everything[-1][0], everything[-1][1]) == (0, 0)
    assert {(layer, head) for layer, head, _ in everything} == {(la, h) for la in range(4) for h in range(5)}


def test_all_heads() -> None:
    adapter = adapter_of("llama")
    heads = all_heads(adapter)
    assert len(heads) == len(set(heads)) == adapter.n_layers * adapter.n_heads
    assert heads[0] == (0, 0) and heads[-1] == (adapter.n_layers - 1, adapter.n_heads - 1)


# --- mean head outputs ---------------------------------------------------------------------------------


def manual_mean(adapter: ModelAdapter, prompts: list[str]) -> Tensor:
    """One unpadded forward per prompt, the out-projection input at the last token, averaged."""
    total = torch.zeros(adapter.n_layers, adapter.n_heads, adapter.head_dim, dtype=torch.float64)
    for text in prompts:
        captured, remove = capture_inputs(adapter)
        try:
            with torch.inference_mode():
                adapter.model(input_ids=torch.tensor([TOKENIZER(text).input_ids]))
        finally:
            remove()
        for layer in range(adapter.n_layers):
            total[layer] += captured[layer][0, -1].reshape(adapter.n_heads, adapter.head_dim).double()
    return (total / len(prompts)).float()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_mean_head_outputs_is_batch_size_invariant_and_matches_a_manual_capture(arch: str) -> None:
    adapter = adapter_of(arch)
    expected = manual_mean(adapter, CLEAN)
    assert expected.shape == (adapter.n_layers, adapter.n_heads, adapter.head_dim)
    for batch_size in (1, 2, 3, 8):
        means = mean_head_outputs(adapter, TOKENIZER, CLEAN, batch_size=batch_size)
        assert means.dtype == torch.float32
        assert float((means - expected).abs().max()) < 1e-5, (arch, batch_size)
    # Not trivially equal to one prompt's value: the average depends on every prompt.
    assert float((expected - manual_mean(adapter, CLEAN[:1])).abs().max()) > 1e-3
    assert pre_hook_count(adapter) == 0


def test_mean_head_outputs_progress_and_runner() -> None:
    adapter = adapter_of("llama")
    steps: list[tuple[int, int]] = []
    runs: list[int] = []

    def run(fn: Callable[[], Tensor]) -> Tensor:
        runs.append(1)
        return fn()

    mean_head_outputs(adapter, TOKENIZER, CLEAN, batch_size=2, run=run,
                      on_batch=lambda done, total: steps.append((done, total)))
    assert steps == [(2, 5), (4, 5), (5, 5)]
    assert len(runs) == 3


def test_capture_last_token_heads_fills_every_layer_and_cleans_up() -> None:
    adapter = adapter_of("gpt2")
    into: list[Tensor | None] = [None] * adapter.n_layers
    ids = torch.tensor([TOKENIZER(CLEAN[2]).input_ids] * 2)
    with torch.inference_mode(), capture_last_token_heads(adapter, into):
        adapter.model(input_ids=ids)
    assert all(item is not None and item.shape == (2, adapter.n_heads, adapter.head_dim) for item in into)
    assert pre_hook_count(adapter) == 0


@pytest.fixture(scope="module", autouse=True)
def report_max_diff() -> Iterator[None]:
    yield
    if MAX_DIFF:
        print("\nmax |AIE fast - reference|:", {arch: f"{value:.2e}" for arch, value in MAX_DIFF.items()})
