"""Tensor parallelism with fvsteer's plugin: vLLM at ``--tensor-parallel-size 2`` against TP=1 and the hf engine.

SmolLM2-135M has 9 attention heads, which vLLM refuses to split in two ("must be divisible by tensor parallel
size"), so the model is a random-weight Llama with 4 heads and 2 KV heads, SmolLM2's tokenizer beside it. Each rank
holds the whole residual stream after its all-reduce and adds the same ``W_t @ B``: greedy texts of steered,
composite and unsteered rows must equal TP=1's and the hf engine's, first-step log-probabilities agree within 1e-3,
a vector written to the bank folder after start steers on every rank (a rank without it would add nothing and the
text would differ), and a steered prompt whose unsteered twin filled the prefix cache is not served from it (the
cache salt). vLLM's CPU build runs the two ranks on the two cores (``VLLM_CPU_OMP_THREADS_BIND="0|1"``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fvsteer_vllm.bank import vector_key
from fvsteer_vllm.spec import Entry, SteeringSpec
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from app.engine.engine import Engine
from app.engine.requests import BankSteering, GenerationRequest, SamplingParams
from app.engine.vllm_backend import cache_salt
from app.engine.vllm_server import ManagedVllm, VllmLaunch
from tests.engine_helpers import tiny_engine
from tests_vllm.conftest import VLLM_PYTHON, embedded_location, launch_healthy

N_LAYERS, D_MODEL, TOKENS = 4, 256, 12  # head_dim 64: a size vLLM's CPU attention supports (16 is refused)
PROMPTS = ["Q: hot\nA:", "The capital of France is", "1, 2, 3,", "Once upon a time", "Q: big\nA:", "dog -> "]
# name → (layer, seed of its direction)
VECTORS = {"tp-a": (1, 1), "tp-b": (2, 2)}
STEERING: dict[str, tuple[dict[str, float], str] | None] = {
    "unsteered": None,
    "one": ({"tp-a": 1.0}, "fv"),
    "composite": ({"tp-a": 0.7, "tp-b": -0.6}, "fv"),
    "all": ({"tp-b": 0.8}, "all"),
}
CASES = [(prompt, kind) for prompt in PROMPTS for kind in STEERING]
LONG_PROMPT = "Each line gives one word and then its opposite, written by a careful teacher. " * 16
RESIDUAL: dict[str, float] = {}  # the wide random model's residual norm at the vectors' layers (set with the model)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer Llama (4 heads, 2 KV heads: both split in two) with SmolLM2's vocabulary and tokenizer."""
    folder = tmp_path_factory.mktemp("tp-model")
    tokenizer = AutoTokenizer.from_pretrained(embedded_location())
    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "llama", hidden_size=D_MODEL, num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=512, vocab_size=len(tokenizer), max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # wide weights: clear argmax gaps, so that reduction order cannot flip a greedy token
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with torch.no_grad():
        states = model(**tokenizer(PROMPTS[0], return_tensors="pt"), output_hidden_states=True).hidden_states
    RESIDUAL["norm"] = float(states[2][0].norm(dim=-1).mean())
    return folder


def direction(seed: int, times: float = 1.0) -> torch.Tensor:
    """A random direction with ``times`` the residual stream's own norm: enough to move the argmax."""
    vector = torch.randn(D_MODEL, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm() * times * RESIDUAL["norm"]


def write_vector(bank_dir: Path, name: str, vector: torch.Tensor) -> str:
    bank_dir.mkdir(parents=True, exist_ok=True)
    save_file({"vector": vector.contiguous()}, str(bank_dir / f"{name}.safetensors"))
    return vector_key(name, vector)


@dataclass
class Served:
    server: ManagedVllm
    bank_dir: Path
    tokenizer: Any

    def spec(self, kind: str, extra: dict[str, tuple[int, torch.Tensor]] | None = None) -> SteeringSpec | None:
        steering = STEERING[kind]
        if steering is None:
            return None
        weights, positions = steering
        vectors = {name: (layer, direction(seed)) for name, (layer, seed) in VECTORS.items()} | (extra or {})
        entries = tuple(Entry(vector_key(name, vectors[name][1]), weight, vectors[name][0])
                        for name, weight in weights.items())
        return SteeringSpec(entries, positions)  # type: ignore[arg-type]

    def complete(self, prompt: str, spec: SteeringSpec | None, salt: str | None = "fvsteer", **extra: Any
                 ) -> dict[str, Any]:
        """``salt``: "fvsteer" for the salt the vllm backend sends, None for none, or a salt of the caller's."""
        ids = self.tokenizer(prompt)["input_ids"]
        body: dict[str, Any] = {"model": "tp", "prompt": ids, "max_tokens": TOKENS, "temperature": 0.0,
                                "logprobs": 20, "return_tokens_as_token_ids": True, **extra}
        if spec is not None:
            body["vllm_xargs"] = {"fvsteer": spec.dumps()}
            if salt is not None:
                body["cache_salt"] = cache_salt(spec, len(ids)) if salt == "fvsteer" else salt
        response = httpx.post(f"{self.server.url}/v1/completions", json=body, timeout=300)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]  # type: ignore[no-any-return]


def serve(model_dir: Path, workdir: Path, tp: int, monkeypatch: pytest.MonkeyPatch) -> ManagedVllm:
    bank_dir = workdir / "bank"
    for name, (_, seed) in VECTORS.items():
        write_vector(bank_dir, name, direction(seed))
    if tp > 1:
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(str(core) for core in range(tp)))
    launch = VllmLaunch(python=VLLM_PYTHON, model=str(model_dir), served_name="tp", bank_dir=bank_dir,
                        bank_capacity=16, max_num_seqs=16, max_model_len=512, dtype=torch.float32,
                        device=torch.device("cpu"), log_path=workdir / "vllm.log", memory_utilization=0.1,
                        eager=True, extra_args=["--tensor-parallel-size", str(tp)])
    return launch_healthy(launch)


def run_all(served: Served) -> dict[tuple[str, str], dict[str, Any]]:
    return {(prompt, kind): served.complete(prompt, served.spec(kind)) for prompt, kind in CASES}


@pytest.fixture(scope="module")
def answers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Any]]:
    """Every case on TP=1, then on TP=2 (one server at a time: both cores each), plus TP=2's extra checks."""
    results: dict[int, Any] = {}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with pytest.MonkeyPatch.context() as monkeypatch:
        for tp in (1, 2):
            workdir = tmp_path_factory.mktemp(f"tp{tp}")
            server = serve(model_dir, workdir, tp, monkeypatch)
            served = Served(server, workdir / "bank", tokenizer)
            try:
                results[tp] = run_all(served)
                if tp == 2:
                    results["late"] = late_vector(served)
                    results["salted"] = salted(served)
                    results["log"] = (workdir / "vllm.log").read_text(errors="replace")
            finally:
                server.stop()
            shutil.rmtree(workdir / "bank", ignore_errors=True)
    yield results


def late_vector(served: Served) -> dict[str, Any]:
    """A vector written to the bank folder after start: the request that names it must find it on both ranks."""
    vector = direction(7, times=1.5)
    key = write_vector(served.bank_dir, "tp-late", vector)
    spec = SteeringSpec((Entry(key, 1.0, 2),), "fv")  # type: ignore[arg-type]
    return served.complete(PROMPTS[0], spec)


def salted(served: Served) -> dict[str, str]:
    """A prompt long enough to fill two KV blocks (vLLM's CPU backend makes blocks of 128 tokens) run unsteered
    first, so its KV is cached; then steered at every position with fvsteer's salt, with none (the trap: the steered
    request reuses the unsteered KV), and with a salt no request shares (a fresh run)."""
    spec = served.spec("all")
    served.complete(LONG_PROMPT, None)
    return {"salted": served.complete(LONG_PROMPT, spec)["text"],
            "unsalted": served.complete(LONG_PROMPT, spec, salt=None)["text"],
            "fresh": served.complete(LONG_PROMPT, spec, salt="fresh-tp")["text"]}


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[Engine]:
    """The hf engine on the same checkpoint: the reference."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    engine = tiny_engine(model, tokenizer, "tp", max_prompt_tokens=256)
    for name, (layer, seed) in VECTORS.items():
        engine.bank.put(name, layer, direction(seed))
    engine.bank.put("tp-late", 2, direction(7, times=1.5))
    engine.start()
    yield engine
    engine.stop()


def hf(engine: Engine, prompt: str, kind: str, weights: dict[str, float] | None = None
       ) -> tuple[str, dict[int, float]]:
    """Greedy text and the first step's 20 likeliest log-probabilities (by token id) from the hf engine."""
    steering = STEERING[kind]
    bank = None
    if weights is not None:
        bank = BankSteering(weights)
    elif steering is not None:
        bank = BankSteering(steering[0], positions=steering[1])  # type: ignore[arg-type]
    ids = engine.encode(prompt, TOKENS)
    request = GenerationRequest(ids, SamplingParams(max_new_tokens=TOKENS, logprobs=20), steering=bank)
    engine.submit([request])
    result = request.future.result(timeout=300)
    assert result.logprobs is not None
    return result.text, dict(result.logprobs[0].top)


def first_step(choice: dict[str, Any]) -> dict[int, float]:
    return {int(token.removeprefix("token_id:")): value
            for token, value in choice["logprobs"]["top_logprobs"][0].items()}


def test_tp2_greedy_texts_equal_tp1_and_the_hf_engine(answers: dict[Any, Any], engine: Engine) -> None:
    for case in CASES:
        reference, _ = hf(engine, *case)
        assert answers[1][case]["text"] == reference, case
        assert answers[2][case]["text"] == reference, case
    changed = sum(answers[2][(prompt, kind)]["text"] != answers[2][(prompt, "unsteered")]["text"]
                  for prompt, kind in CASES if kind != "unsteered")
    print(f"steered texts that differ from the unsteered one on TP=2: {changed} of {len(CASES) - len(PROMPTS)}")
    assert changed >= (len(CASES) - len(PROMPTS)) // 2  # not a vacuous parity: most steered texts move


def test_tp2_first_step_log_probabilities_within_1e3(answers: dict[Any, Any], engine: Engine) -> None:
    worst = 0.0
    for case in CASES:
        _, reference = hf(engine, *case)
        for tp in (1, 2):
            for token, logprob in first_step(answers[tp][case]).items():
                if token in reference:
                    worst = max(worst, abs(reference[token] - logprob))
        assert set(first_step(answers[2][case])) & set(reference), case
    print(f"largest first-step log-probability difference (TP=1 and TP=2 against hf): {worst:.2e}")
    assert worst <= 1e-3


def test_a_vector_written_after_start_steers_on_every_rank(answers: dict[Any, Any], engine: Engine) -> None:
    text, _ = hf(engine, PROMPTS[0], "one", weights={"tp-late": 1.0})
    assert answers["late"]["text"] == text
    assert text != answers[2][(PROMPTS[0], "unsteered")]["text"]


def test_the_cache_salt_keeps_a_steered_prompt_from_its_unsteered_cache(answers: dict[Any, Any]) -> None:
    runs = answers["salted"]
    assert runs["salted"] == runs["fresh"]
    assert runs["unsalted"] != runs["fresh"]  # the trap is real on two ranks: the cache was hit


def test_both_ranks_installed_the_steering(answers: dict[Any, Any]) -> None:
    assert answers["log"].count("fvsteer: steering installed on 4 layers") == 2
