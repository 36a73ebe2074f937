"""The OpenAI-compatible surface on the embedded SmolLM2-135M-Instruct with its shipped antonym vector (marked
``model``): chat through the model's own chat template, steered exactly as ``/complete`` steers the same prompt;
streaming chat; and the echo scoring a harness sends agreeing with ``/score``."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tests.conftest import ROOT, LiveServer

pytestmark = pytest.mark.model
ANTONYM = ROOT / "vectors" / "smollm2-135m-instruct" / "antonym.safetensors"


@dataclass
class Antonym:
    server: LiveServer
    base: str
    vector: str
    preset: str

    def api(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.server.url}/v1", api_key="unused", max_retries=0)


def _upload(server: LiveServer, path: Path, name: str, layer: int) -> None:
    response = httpx.post(f"{server.url}/admin/vectors", headers={"Authorization": f"Bearer {server.admin_token}"},
                          files={"file": (path.name, path.read_bytes())}, data={"name": name, "layer": str(layer)},
                          timeout=30)
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def antonym(embedded_server: LiveServer) -> Iterator[Antonym]:
    name = f"antonym-{secrets.token_hex(3)}"
    _upload(embedded_server, ANTONYM, name, 9)
    admin = {"Authorization": f"Bearer {embedded_server.admin_token}"}
    preset = f"{name}-preset"
    assert httpx.put(f"{embedded_server.url}/admin/presets/{preset}", headers=admin,
                     json={"relations": {name: 1.0}}).status_code == 201
    base = httpx.get(f"{embedded_server.url}/readyz").json()["model"]
    yield Antonym(embedded_server, base, name, preset)
    httpx.delete(f"{embedded_server.url}/admin/presets/{preset}", headers=admin)
    httpx.delete(f"{embedded_server.url}/admin/vectors/{name}", headers=admin)


def _chat_prompt(server: LiveServer, messages: list[dict[str, str]]) -> str:
    """The prompt as a client renders it from ``/tokenizer_info`` (what lm-eval's remote tokenizer does)."""
    template = httpx.get(f"{server.url}/tokenizer_info").json()["chat_template"]
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(template).render(messages=messages, add_generation_prompt=True)


def _complete(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/complete", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_steered_chat_is_complete_on_the_rendered_chat_prompt(antonym: Antonym) -> None:
    """The vector goes where the FV policy puts it in any prompt: the last prompt token (the newline closing the
    assistant header) and every generated token."""
    messages = [{"role": "user", "content": "Give the opposite of: hot"}]
    api = antonym.api()
    steered = api.chat.completions.create(model=antonym.preset, messages=messages,  # type: ignore[arg-type]
                                          max_completion_tokens=12, temperature=0)
    plain = api.chat.completions.create(model=antonym.base, messages=messages,  # type: ignore[arg-type]
                                        max_completion_tokens=12, temperature=0)
    reference = _complete(antonym.server, prompt=_chat_prompt(antonym.server, messages), max_new_tokens=12,
                          relations={antonym.vector: 1.0}, return_baseline=True)
    assert steered.choices[0].message.content == reference["text"]
    assert plain.choices[0].message.content == reference["baseline"]["text"]
    assert reference["text"] != reference["baseline"]["text"]
    assert steered.usage is not None and steered.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert (steered.model_extra or {})["steering"]["layers"] == reference["steering"]["layers"]


def test_streamed_chat_with_logprobs(antonym: Antonym) -> None:
    messages = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "cold"}]
    api = antonym.api()
    whole = api.chat.completions.create(model=antonym.preset, messages=messages,  # type: ignore[arg-type]
                                        max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    choice = whole.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert "".join(item.token for item in choice.logprobs.content).startswith(choice.message.content or "")
    for item in choice.logprobs.content:
        assert len(item.top_logprobs) == 2 and item.logprob == max(top.logprob for top in item.top_logprobs)
        assert bytes(item.bytes or []).decode() == item.token
    content, roles, finish = "", [], None
    for chunk in api.chat.completions.create(model=antonym.preset, messages=messages,  # type: ignore[arg-type]
                                             max_tokens=8, temperature=0, stream=True):
        delta = chunk.choices[0].delta
        roles += [delta.role] if delta.role else []
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert roles == ["assistant"] and content == choice.message.content and finish == choice.finish_reason


@pytest.mark.parametrize("positions", ["fv", "all"])
def test_echo_scoring_agrees_with_score_on_the_model(antonym: Antonym, positions: str) -> None:
    """``log p(" cold" | "Q: hot\\nA:")`` steered: from a harness-style echo request and from /score."""
    url = antonym.server.url
    context, answers = "Q: hot\nA:", [" cold", " warm", " freezing"]
    steering = {"relations": {antonym.vector: 1.0}, "positions": positions}
    score = httpx.post(f"{url}/score", json={"prompt": context, "continuations": answers, **steering}, timeout=60)
    assert score.status_code == 200, score.text
    body = score.json()
    assert answers[body["best"]] == " cold"
    ids = httpx.post(f"{url}/tokenize", json={"prompt": context}).json()["tokens"]
    for answer, scored in zip(answers, body["scores"], strict=True):
        tail = [token["id"] for token in scored["tokens"]]
        echoed = antonym.api().completions.create(model=antonym.base, prompt=ids + tail, max_tokens=0, echo=True,
                                                  logprobs=1, extra_body={"steering": steering})
        values = echoed.choices[0].logprobs.token_logprobs[len(ids):]  # type: ignore[union-attr,index]
        overlap = len(tail) if positions == "all" else 1
        assert values[:overlap] == pytest.approx([t["logprob"] for t in scored["tokens"]][:overlap], abs=1e-4), answer
    plain = httpx.post(f"{url}/score", json={"prompt": context, "continuations": answers}, timeout=60).json()
    assert body["scores"][0]["logprob"] > plain["scores"][0]["logprob"] + 1.0  # the vector makes " cold" likelier
