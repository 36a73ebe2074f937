"""The OpenAI-compatible surface on the vllm backend, with the hf backend as the reference: the same texts, the same
generated tokens and log-probabilities (vLLM's own, parsed from its logprobs) within float tolerance, steered by a
model id, a preset or ``extra_body``; chat through the chat template; and a harness's echo request."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import LiveServer

PROMPTS = ["Q: big\nA:", "Q: fast\nA:", "The opposite of up is"]
TOL = 2e-3  # log-probabilities of two engines (the parity suite measures ~6e-5 on texts' logprobs)


def api(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def base(server: LiveServer) -> str:
    return str(httpx.get(f"{server.url}/readyz").json()["model"])


def _completions(server: LiveServer, **asked: Any) -> list[Any]:
    result = api(server).completions.create(prompt=PROMPTS, max_tokens=8, temperature=0, logprobs=3, **asked)
    return list(result.choices)


@pytest.mark.parametrize("how", ["vector id", "extra_body"])
def test_completions_with_logprobs_match_the_hf_backend(vllm_front: LiveServer, hf_front: LiveServer, how: str
                                                         ) -> None:
    model = base(vllm_front)
    asked: dict[str, Any] = ({"model": f"{model}+antonym"} if how == "vector id" else
                             {"model": model, "extra_body": {"steering": {"relations": {"antonym": 1.0}}}})
    served, reference = _completions(vllm_front, **asked), _completions(hf_front, **asked)
    plain = _completions(vllm_front, model=model)
    for got, want, unsteered in zip(served, reference, plain, strict=True):
        assert got.text == want.text and got.text != unsteered.text
        assert got.logprobs.tokens == want.logprobs.tokens
        assert got.logprobs.token_logprobs == pytest.approx(want.logprobs.token_logprobs, abs=TOL)
        for top_got, top_want in zip(got.logprobs.top_logprobs, want.logprobs.top_logprobs, strict=True):
            best_got = max(top_got, key=top_got.get)
            assert best_got == max(top_want, key=top_want.get)
            assert top_got[best_got] == pytest.approx(top_want[best_got], abs=TOL)


def test_chat_with_a_preset_matches_the_hf_backend(vllm_front: LiveServer, hf_front: LiveServer) -> None:
    messages = [{"role": "user", "content": "Give the opposite of: big"}]
    answers = {}
    for name, server in (("vllm", vllm_front), ("hf", hf_front)):
        admin = {"Authorization": f"Bearer {server.admin_token}"}
        put = httpx.put(f"{server.url}/admin/presets/opposites-{name}", headers=admin,
                        json={"relations": {"antonym": 1.0}})
        assert put.status_code in (200, 201), put.text
        answers[name] = api(server).chat.completions.create(
            model=f"opposites-{name}", messages=messages, max_tokens=10, temperature=0,  # type: ignore[arg-type]
            logprobs=True, top_logprobs=1)
    got, want = answers["vllm"].choices[0], answers["hf"].choices[0]
    assert got.message.content == want.message.content
    assert [t.logprob for t in got.logprobs.content] == pytest.approx(  # type: ignore[union-attr]
        [t.logprob for t in want.logprobs.content], abs=TOL)  # type: ignore[union-attr]
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in api(vllm_front).chat.completions.create(
        model="opposites-vllm", messages=messages, max_tokens=10, temperature=0, stream=True)  # type: ignore[arg-type]
        if chunk.choices)
    assert streamed == got.message.content


def test_a_harness_loglikelihood_request(vllm_front: LiveServer, hf_front: LiveServer) -> None:
    """lm-eval's local-completions sends token ids, echo, max_tokens 1, logprobs 1: prompt log-probabilities
    (scored on the HF model) and one generated token (vLLM's)."""
    ids = httpx.post(f"{vllm_front.url}/tokenize", json={"prompt": "Q: big\nA: small"}).json()["tokens"]
    answers = []
    for server in (vllm_front, hf_front):
        result = api(server).completions.create(model=f"{base(server)}+antonym", prompt=[ids], max_tokens=1, echo=True,
                                                logprobs=1, temperature=0)
        answers.append(result.choices[0].logprobs)
    got, want = answers
    assert len(got.token_logprobs) == len(ids) + 1 and got.token_logprobs[0] is None
    assert got.token_logprobs[1:] == pytest.approx(want.token_logprobs[1:], abs=TOL)
    assert got.tokens == want.tokens
