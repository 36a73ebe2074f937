"""``benchmarks/gpu_check.py``, the script a lent GPU runs, run here on CPU with a tiny shape so it cannot rot: its
checks hold (exact parity in float32, isolation) and it imports nothing but torch, transformers and fvsteer's engine
(the lent machine has no pydantic, FastAPI or Redis client)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("pydantic", "pydantic_settings", "fastapi", "starlette", "redis", "httpx", "uvicorn", "rq")


def test_the_tiny_check_passes_with_exact_parity_and_isolation(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    code = gpu_check.main(["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--rows", "1,3",
                           "--new-tokens", "6", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0
    assert report["isolation_ok"] and report["isolation_steered_row_changed"]
    assert report["parity_tokens_equal"] == report["parity_prompts"] == 4
    assert report["parity_first_logprob_max_diff"] < 1e-4
    assert [(row["rows"], row["steered"]) for row in report["speed"]] == [(1, False), (1, True), (3, False),
                                                                          (3, True)]
    assert all(row["tokens"] > 0 and row["tokens_per_s"] > 0 for row in report["speed"])


def test_the_check_runs_in_bf16() -> None:
    """In bf16 the engine adds the float32 bank's composite in the model's dtype, as the reference hook does: the
    same greedy tokens as HF generate with that hook, one row at a time on the same kernels."""
    report = gpu_check.check("tiny", gpu_check.torch.device("cpu"), gpu_check.torch.bfloat16, [2], 4)
    assert report.isolation_ok and report.isolation_steered_row_changed
    assert report.parity_tokens_equal == report.parity_prompts == 4
    assert report.parity_first_logprob_max_diff < 1e-2


def test_it_needs_only_torch_and_transformers() -> None:
    probe = ("import runpy, sys; runpy.run_path('benchmarks/gpu_check.py', run_name='probe'); "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
    assert {"torch", "transformers", "app"} <= loaded
    assert not loaded & set(SERVER_ONLY)
