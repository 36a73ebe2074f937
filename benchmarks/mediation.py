"""Head scoring by causal mediation: the reference method (one full forward per head) against the fast one
(prefix KV cache shared, heads patched side by side in chunks of whole layers, blocks under a chunk replayed),
on the embedded model.

Both score the same corrupted prompts and the same heads with the same head means; the script prints both
times, their ratio and the largest difference between the two AIE matrices. Run it on a quiet machine:

    .venv/bin/python benchmarks/mediation.py                        # all heads, 25 prompts (~40 min on 2 cores)
    .venv/bin/python benchmarks/mediation.py --reference-prompts 2  # quick look: reference on 2 prompts

``--head-batch`` sets the fast method's chunk size (heads per forward; default ``DEFAULT_HEAD_BATCH``).
With ``--reference-prompts N`` the ratio compares per-prompt times (the fast method still scores every prompt)
and the difference is taken over those N prompts.
"""

from __future__ import annotations

import argparse
import logging
import random
import time

import torch

from app.fv.activations import mean_head_outputs
from app.fv.mediation import DEFAULT_HEAD_BATCH, ScoredPrompt, aie_fast, aie_reference, all_heads
from app.fv.pairs import relation_pairs, split_pairs
from app.fv.prompts import Template, bos_prefix, icl_prompts
from app.model.adapter import adapt
from app.model.loading import load_model
from app.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relation", default="antonym")
    parser.add_argument("--prompts", type=int, default=25, help="corrupted prompts scored (Todd et al.: 25)")
    parser.add_argument("--mean-prompts", type=int, default=100, help="clean prompts averaged for head means")
    parser.add_argument("--reference-prompts", type=int, default=None, help="score only the first N by reference")
    parser.add_argument("--head-batch", type=int, default=DEFAULT_HEAD_BATCH, help="fast method: heads per forward")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = Settings()
    loaded = load_model("embedded:smollm2-135m-instruct", "cpu", "float32", settings.cache_dir)
    adapter, tokenizer = adapt(loaded.model, loaded.tokenizer), loaded.tokenizer
    split = split_pairs(relation_pairs(args.relation), args.seed)
    prefix, template, rng = bos_prefix(tokenizer, adapter.adds_bos), Template(), random.Random(args.seed)

    clean = icl_prompts(tokenizer, template, prefix, split.train,
                        [rng.choice(split.train) for _ in range(args.mean_prompts)], rng)
    means = mean_head_outputs(adapter, tokenizer, [item.text for item in clean])
    corrupted = icl_prompts(tokenizer, template, prefix, split.train,
                            [rng.choice(split.train) for _ in range(args.prompts)], rng, shuffle_labels=True)
    prompts = [ScoredPrompt(tokenizer(item.text).input_ids, item.answer_token) for item in corrupted]
    n_reference = min(args.reference_prompts or len(prompts), len(prompts))
    heads = all_heads(adapter)
    print(f"{loaded.name}: {len(heads)} heads, {len(prompts)} corrupted prompts of "
          f"{min(len(p.ids) for p in prompts)}-{max(len(p.ids) for p in prompts)} tokens; "
          f"reference on {n_reference}", flush=True)

    # Interleave per prompt so both methods see the same machine load.
    fast_s = reference_s = 0.0
    fast_sum = torch.zeros(adapter.n_layers, adapter.n_heads)
    reference_sum = torch.zeros(adapter.n_layers, adapter.n_heads)
    for index, prompt in enumerate(prompts):
        started = time.perf_counter()
        fast = aie_fast(adapter, [prompt], means, heads, head_batch=args.head_batch)
        fast_s += time.perf_counter() - started
        if index < n_reference:
            fast_sum += fast
            started = time.perf_counter()
            reference_sum += aie_reference(adapter, [prompt], means, heads)
            reference_s += time.perf_counter() - started
            print(f"prompt {index + 1}: fast {fast_s:.1f} s, reference {reference_s:.1f} s (cumulative)", flush=True)
    max_abs_diff = float((fast_sum / n_reference - reference_sum / n_reference).abs().max())
    ratio = (reference_s / n_reference) / (fast_s / len(prompts))
    print()
    print(f"{'method':<12}{'prompts':>8}{'seconds':>10}{'s/prompt':>10}")
    print(f"{'reference':<12}{n_reference:>8}{reference_s:>10.1f}{reference_s / n_reference:>10.2f}")
    print(f"{'fast':<12}{len(prompts):>8}{fast_s:>10.1f}{fast_s / len(prompts):>10.2f}")
    print(f"ratio (reference/fast per prompt): {ratio:.1f}x   max |AIE fast - AIE reference|: {max_abs_diff:.2e}")
    print(f"head_batch={args.head_batch} "
          f"heads={len(heads)} prompts={len(prompts)} reference_prompts={n_reference} reference_s={reference_s:.2f} "
          f"fast_s={fast_s:.2f} ratio={ratio:.2f} max_abs_diff={max_abs_diff:.3e}")


if __name__ == "__main__":
    main()
