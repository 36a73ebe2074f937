"""The bank under vLLM's default compiled mode on CPU (torch.compile with inductor; CUDA graphs are a GPU matter):
the steered layers are traced into the graph and read the same fixed buffers, so a compiled server steers like
the eager one. (Its cold compile takes a few minutes on 2 cores.)"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests_vllm.conftest import Vllm, start_vllm
from tests_vllm.test_parity import STEERING
from tests_vllm.test_prefix_cache import ids

PROMPTS = ["Q: hot\nA:", "Q: child\nA:", "Q: walk\nA:", "Q: France\nA:", "Q: happy\nA:", "Q: tree\nA:"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory, vllm: Vllm) -> Iterator[Vllm]:
    server = start_vllm(tmp_path_factory.mktemp("compiled"), vllm.registry, eager=False)
    yield Vllm(server, vllm.registry)
    server.stop()


def first_steps(server: Vllm, cases: list[tuple[str, str]]) -> list[dict[str, Any]]:
    def one(case: tuple[str, str]) -> dict[str, Any]:
        prompt, kind = case
        body = STEERING[kind]
        spec = server.spec(body["relations"], layer=body.get("layer"), positions=body.get("positions", "fv")) \
            if body else None
        return server.complete(ids(prompt), spec, max_tokens=12, logprobs=20, return_tokens_as_token_ids=True)[
            "choices"][0]

    with ThreadPoolExecutor(len(cases)) as pool:
        return list(pool.map(one, cases))


def test_compiled_mode_steers_like_eager(vllm: Vllm, compiled: Vllm) -> None:
    assert "--enforce-eager" not in compiled.server.launch.command(0)
    cases = [(prompt, kind) for prompt in PROMPTS for kind in STEERING]
    eager, graph = first_steps(vllm, cases), first_steps(compiled, cases)
    same = sum(a["text"] == b["text"] for a, b in zip(eager, graph, strict=True))
    worst = max(abs(a["logprobs"]["top_logprobs"][0][token] - logprob)
                for a, b in zip(eager, graph, strict=True)
                for token, logprob in b["logprobs"]["top_logprobs"][0].items()
                if token in a["logprobs"]["top_logprobs"][0])
    print(f"compiled vs eager: {same} of {len(cases)} texts equal; first-step log-probability difference {worst:.2e}")
    assert same >= 0.95 * len(cases) and worst <= 1e-3
    plain = {prompt: text["text"] for (prompt, kind), text in zip(cases, graph, strict=True) if kind == "unsteered"}
    assert sum(text["text"] != plain[prompt] for (prompt, kind), text in zip(cases, graph, strict=True)
               if kind != "unsteered") >= len(cases) // 2  # the compiled graph does steer
