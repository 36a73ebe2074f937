"""The check to run when a GPU is lent: the ``hf`` engine on a random-weight model with the shape of an 8B Llama, in
bf16, with nothing downloaded (the model is built from its config on the device, the tokenizer is made in memory).

It reports, as one table:

- the engine's decode speed (completion tokens per second over the whole batch) unsteered and steered at 1, 16 and 64
  concurrent rows; steered rows each get their own composite of two bank vectors (distinct weights per row), as the
  server builds them;
- per-row isolation: a batch in which one row is steered and the others are not, against the same batch all
  unsteered: the unsteered rows' tokens and log-probabilities must be bit-identical, the steered row must change;
- parity: each prompt alone through the engine against a plain HF ``generate`` with a reference forward hook (the
  vector added at the last prompt position and at every generated one), greedy tokens and first-step log-probs.

It needs only torch and transformers (and fvsteer's own ``app.engine``/``app.model``, which import nothing else), so
the lent machine runs it from a copy of the working tree. ``make test`` runs it with ``--shape tiny`` on CPU, where
parity must be exact, so it cannot rot.

    python benchmarks/gpu_check.py                      # 8B shape, bf16, cuda (~3 minutes on one H100)
    python benchmarks/gpu_check.py --shape tiny --device cpu --dtype float32 --rows 1,4 --new-tokens 8

Exit status 1 when isolation fails or (float32 only) parity is not exact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.engine.bank import VectorBank  # noqa: E402  (after the path: run as a script from anywhere)
from app.engine.engine import Engine  # noqa: E402
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams  # noqa: E402
from app.model.adapter import ModelAdapter, adapt  # noqa: E402
from app.model.handle import ModelHandle  # noqa: E402
from app.model.loading import LoadedModel  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B's published config (hidden 4096, 32 layers, GQA 32/8, SwiGLU 14336, vocab 128256).
    "llama-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                     intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                     rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False),
}
PROMPTS = ["Q: hot\nA:", "Q: big\nA:", "The capital of France is", "Translate to French: dog ->",
           "1, 2, 3,", "Once upon a time", "def add(a, b):", "Q: fast\nA:"]
SPECIALS = ["<pad>", "<s>", "</s>"]
CHARACTERS = [chr(code) for code in range(32, 127)] + ["\n"]


@dataclass
class SpeedRow:
    rows: int
    steered: bool
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Report:
    shape: str
    device: str
    dtype: str
    layer: int
    vector_norm: float
    speed: list[SpeedRow] = field(default_factory=list)
    isolation_ok: bool = False
    isolation_steered_row_changed: bool = False
    parity_tokens_equal: int = 0
    parity_prompts: int = 0
    parity_first_logprob_max_diff: float = 0.0
    parity_first_token_equal: int = 0


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Characters in, any id of the model's vocabulary out: ids past the characters decode as ``<tN>`` so that a
    random model's tokens always decode."""
    tokens = SPECIALS + CHARACTERS
    tokens += [f"<t{index}>" for index in range(len(tokens), vocab_size)]
    backend = Tokenizer(models.WordLevel(vocab={token: i for i, token in enumerate(tokens)}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<pad>")


def make_model(shape: str, device: torch.device, dtype: torch.dtype, seed: int) -> PreTrainedModel:
    """Random weights made on ``device`` (an 8B model initialised on the host would take minutes)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", bos_token_id=1, eos_token_id=2, pad_token_id=0, **SHAPES[shape])
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def residual_norm(adapter: ModelAdapter, ids: list[int], layer: int) -> float:
    """The mean per-token norm of block ``layer``'s output on a prompt: the scale a steering vector must reach."""
    captured: list[Tensor] = []
    handle = adapter.blocks[layer].register_forward_hook(
        lambda module, args, out: captured.append(out if isinstance(out, Tensor) else out[0]))
    try:
        with torch.inference_mode():
            adapter.model(input_ids=torch.tensor([ids], device=adapter.model.device))
    finally:
        handle.remove()
    return float(captured[0].float().norm(dim=-1).mean())


def run(engine: Engine, prompts: list[list[int]], params: SamplingParams,
        steering: list[BankSteering | None]) -> tuple[list[GenerationResult], float]:
    """Submit the rows together (admitted in one step) and wait for all of them."""
    requests = [GenerationRequest(prompt_ids=ids, params=params, steering=steer)
                for ids, steer in zip(prompts, steering, strict=True)]
    started = time.perf_counter()
    engine.submit(requests)
    wait([request.future for request in requests])
    seconds = time.perf_counter() - started
    return [request.future.result() for request in requests], seconds


def reference_generate(model: PreTrainedModel, adapter: ModelAdapter, ids: list[int], layer: int, vector: Tensor,
                       new_tokens: int) -> tuple[list[int], Tensor]:
    """Plain HF ``generate`` with a forward hook of its own: ``vector`` added to block ``layer``'s output at the last
    prompt position in the prefill and at the one position of every decode step (fvsteer's ``fv`` positions)."""

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        hidden = output if isinstance(output, Tensor) else output[0]
        added = hidden.clone()
        added[:, -1, :] += vector.to(hidden.dtype)
        return added if isinstance(output, Tensor) else (added, *output[1:])

    handle = adapter.blocks[layer].register_forward_hook(hook)
    try:
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=2)
    finally:
        handle.remove()
    tokens = [int(t) for t in out.sequences[0, len(ids):]]
    first = torch.log_softmax(out.scores[0][0].float(), dim=-1)
    return tokens, first


def check(shape: str, device: torch.device, dtype: torch.dtype, rows_list: list[int], new_tokens: int,
          seed: int = 0) -> Report:
    model = make_model(shape, device, dtype, seed)
    tokenizer = make_tokenizer(model.config.vocab_size)
    adapter = adapt(model, tokenizer)
    layer = adapter.n_layers // 3
    loaded = LoadedModel(model, tokenizer, f"random-{shape}", device, dtype)
    bank = VectorBank(adapter.n_layers, adapter.d_model, device, loaded.name)
    engine = Engine(loaded, ModelHandle(adapter, tokenizer, f"random-{shape}-{seed}", loaded.name), bank,
                    max_batch=max([*rows_list, len(PROMPTS)]), max_queue=4 * max(rows_list), max_prompt_tokens=256)
    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in PROMPTS]
    generator = torch.Generator().manual_seed(seed + 1)
    # Eight times the residual's own norm at that layer: enough to move a random model's argmax.
    norm = 8.0 * residual_norm(adapter, encoded[0], layer)
    for name in ("a", "b"):
        direction = torch.randn(adapter.d_model, generator=generator)
        bank.put(name, layer, direction / direction.norm() * norm)
    report = Report(shape, str(device), str(dtype).removeprefix("torch."), layer, norm)
    greedy = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, logprobs=0)
    engine.start()
    try:
        run(engine, encoded[:2], SamplingParams(max_new_tokens=4), [None, None])  # warm-up: kernels, allocator
        for rows in rows_list:
            prompts = [encoded[i % len(encoded)] for i in range(rows)]
            for steer in (False, True):
                steering: list[BankSteering | None] = [
                    BankSteering({"a": 1.0 - i / (2 * rows), "b": i / (2 * rows)}) if steer else None
                    for i in range(rows)]
                results, seconds = run(engine, prompts, SamplingParams(max_new_tokens=new_tokens), steering)
                report.speed.append(SpeedRow(rows, steer, sum(r.completion_tokens for r in results), seconds))

        plain, _ = run(engine, encoded, greedy, [None] * len(encoded))
        one, _ = run(engine, encoded, greedy, [BankSteering({"a": 1.0})] + [None] * (len(encoded) - 1))
        report.isolation_ok = all(p.token_ids == o.token_ids and p.logprobs == o.logprobs
                                  for p, o in zip(plain[1:], one[1:], strict=True))
        report.isolation_steered_row_changed = plain[0].token_ids != one[0].token_ids

        vector = bank.table(layer)[0].clone()  # "a": the first row of its layer's table
        diffs = []
        for ids in encoded[:4]:
            [alone], _ = run(engine, [ids], greedy, [BankSteering({"a": 1.0})])
            tokens, first = reference_generate(model, adapter, ids, layer, vector, new_tokens)
            report.parity_prompts += 1
            report.parity_tokens_equal += int(alone.token_ids == tokens[: len(alone.token_ids)])
            report.parity_first_token_equal += int(alone.token_ids[:1] == tokens[:1])
            assert alone.logprobs is not None
            diffs.append(abs(alone.logprobs[0].logprob - float(first[alone.token_ids[0]])))
        report.parity_first_logprob_max_diff = max(diffs)
    finally:
        engine.stop()
    return report


def table(report: Report) -> str:
    lines = [f"gpu_check: {report.shape} Llama shape, {report.dtype} on {report.device}; vectors at layer "
             f"{report.layer}, norm {report.vector_norm:.1f}", "",
             "| rows | unsteered tok/s | steered tok/s | steered / unsteered |", "|---:|---:|---:|---:|"]
    by_rows: dict[int, dict[bool, SpeedRow]] = {}
    for row in report.speed:
        by_rows.setdefault(row.rows, {})[row.steered] = row
    for rows, pair in by_rows.items():
        plain, steered = pair[False], pair[True]
        lines.append(f"| {rows} | {plain.tokens_per_s:.1f} | {steered.tokens_per_s:.1f} | "
                     f"{steered.tokens_per_s / plain.tokens_per_s:.2f} |")
    lines += ["", f"isolation: unsteered rows beside a steered one identical: {report.isolation_ok}; "
                  f"the steered row changed: {report.isolation_steered_row_changed}",
              f"parity with HF generate + reference hook: greedy tokens equal on {report.parity_tokens_equal} of "
              f"{report.parity_prompts} prompts, first token on {report.parity_first_token_equal}; first-step "
              f"log-prob max |diff| {report.parity_first_logprob_max_diff:.2e}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16")
    parser.add_argument("--rows", default="1,16,64", help="concurrent rows of the speed rows (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    report = check(args.shape, torch.device(args.device), getattr(torch, args.dtype),
                   [int(n) for n in args.rows.split(",")], args.new_tokens)
    print(table(report))
    if args.out is not None:
        args.out.write_text(json.dumps(asdict(report) | {"speed": [asdict(r) | {"tokens_per_s": r.tokens_per_s}
                                                                   for r in report.speed]}, indent=2))
    exact = report.dtype != "float32" or (report.parity_tokens_equal == report.parity_prompts
                                          and report.parity_first_logprob_max_diff < 1e-4)
    return 0 if report.isolation_ok and report.isolation_steered_row_changed and exact else 1


if __name__ == "__main__":
    sys.exit(main())
