"""The OpenAI-compatible surface driven by the real ``openai`` package (sync and async, streaming and not) against a
real server on the tiny random llama: model ids and presets, prompt forms, n, echo, logprobs, steering through
``extra_body`` / a preset / ``<base>+<vector>`` (each equal to ``POST /complete`` with the same steering), and
errors arriving as the SDK's own typed exceptions."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.errors import QueueFull
from tests.conftest import LiveServer
from tests.harness import Harness, make_harness
from tests.test_api import upload, vector_bytes

PROMPT = "the cat sat"


@dataclass
class Steered:
    server: LiveServer
    base: str
    vector: str
    preset: str

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.admin_token}"}


@pytest.fixture
def steered(live_server: LiveServer) -> Iterator[Steered]:
    """A fresh vector and a preset that applies it at weight 1, on the shared tiny server."""
    vector, preset = f"v-{secrets.token_hex(4)}", f"p-{secrets.token_hex(4)}"
    assert upload(live_server, vector, vector_bytes(live_server.d_model, seed=3, scale=8.0)).status_code == 201
    setup = Steered(live_server, httpx.get(f"{live_server.url}/readyz").json()["model"], vector, preset)
    response = httpx.put(f"{live_server.url}/admin/presets/{preset}", headers=setup.admin(),
                         json={"relations": {vector: 1.0}, "description": "test preset"})
    assert response.status_code == 201, response.text
    yield setup
    httpx.delete(f"{live_server.url}/admin/presets/{preset}", headers=setup.admin())
    httpx.delete(f"{live_server.url}/admin/vectors/{vector}", headers=setup.admin())


def client(server: LiveServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", **options)


def complete(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/complete", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_models_list_the_base_every_preset_and_every_vector(steered: Steered) -> None:
    models = {model.id: model for model in client(steered.server).models.list()}
    assert {steered.base, steered.preset, f"{steered.base}+{steered.vector}"} <= set(models)
    preset = client(steered.server).models.retrieve(steered.preset)
    assert preset.id == steered.preset and preset.owned_by == "fvsteer"
    extra = preset.model_extra or {}
    assert extra["kind"] == "preset" and extra["parent"] == steered.base
    assert extra["steering"]["relations"] == {steered.vector: 1.0} and extra["steering"]["status"] == "ok"
    with pytest.raises(openai.NotFoundError):
        client(steered.server).models.retrieve("no-such-model")


def test_steering_by_extra_body_preset_or_vector_id_equals_complete(steered: Steered) -> None:
    server, api = steered.server, client(steered.server)
    asked = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = api.completions.create(model=steered.base, **asked)
    by_field = api.completions.create(model=steered.base, extra_body={"steering": {"relations": {steered.vector: 1}}},
                                      **asked)
    by_preset = api.completions.create(model=steered.preset, **asked)
    by_id = api.completions.create(model=f"{steered.base}+{steered.vector}", **asked)
    reference = complete(server, prompt=PROMPT, max_new_tokens=12, relations={steered.vector: 1},
                         return_baseline=True)
    assert plain.choices[0].text == reference["baseline"]["text"]
    assert by_field.choices[0].text == by_preset.choices[0].text == by_id.choices[0].text == reference["text"]
    assert reference["text"] != reference["baseline"]["text"]
    assert (by_preset.model_extra or {})["steering"] == reference["steering"]
    assert (plain.model_extra or {}).get("steering") is None
    assert plain.usage is not None and plain.usage.prompt_tokens == reference["usage"]["prompt_tokens"]
    assert plain.usage.completion_tokens == reference["usage"]["completion_tokens"]


def test_weights_and_scale_in_the_model_id(steered: Steered) -> None:
    api = client(steered.server)
    asked = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    doubled = api.completions.create(model=f"{steered.base}+{steered.vector}*2", **asked)
    reference = complete(steered.server, prompt=PROMPT, max_new_tokens=8, relations={steered.vector: 2})
    assert doubled.choices[0].text == reference["text"]
    for bad in (f"{steered.base}+{steered.vector}*x", f"{steered.base}+{steered.vector}+{steered.vector}",
                f"{steered.base}+BAD NAME"):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            api.completions.create(model=bad, **asked)
        assert refused.value.body["param"] == "model"  # type: ignore[index]


def test_prompt_forms_n_and_seeds(steered: Steered) -> None:
    api = client(steered.server)
    ids = httpx.post(f"{steered.server.url}/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    as_text = api.completions.create(model=steered.base, prompt=PROMPT, max_tokens=6, temperature=0)
    as_ids = api.completions.create(model=steered.base, prompt=ids, max_tokens=6, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text
    many = api.completions.create(model=steered.base, prompt=[PROMPT, "a dog"], max_tokens=6, temperature=0, n=2)
    assert [choice.index for choice in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text == as_text.choices[0].text  # greedy: n copies
    many_ids = api.completions.create(model=steered.base, prompt=[ids, ids[:2]], max_tokens=6, temperature=0)
    assert len(many_ids.choices) == 2 and many_ids.choices[0].text == as_text.choices[0].text
    sampled = api.completions.create(model=steered.base, prompt=PROMPT, max_tokens=12, temperature=1.0, n=3, seed=5)
    again = api.completions.create(model=steered.base, prompt=PROMPT, max_tokens=12, temperature=1.0, n=3, seed=5)
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]  # reproducible with a seed …
    assert len({c.text for c in sampled.choices}) > 1  # … and the choices are not copies (seed + i)


def test_echo_with_zero_max_tokens_scores_the_prompt(steered: Steered) -> None:
    api = client(steered.server)
    scored = api.completions.create(model=steered.base, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    choice = scored.choices[0]
    assert choice.text == PROMPT and choice.logprobs is not None
    tokens, values = choice.logprobs.tokens or [], choice.logprobs.token_logprobs or []
    assert "".join(tokens) == PROMPT and values[0] is None and all(v is not None and v < 0 for v in values[1:])
    assert choice.logprobs.text_offset == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        api.completions.create(model=steered.base, prompt=PROMPT, max_tokens=0)
    assert refused.value.body["param"] == "max_tokens"  # type: ignore[index]


def test_echo_scoring_agrees_with_score_where_they_overlap(steered: Steered) -> None:
    """The harness's loglikelihood request (context + continuation as one prompt, echo) against /score: equal for
    the continuation's first token with positions "fv", and for every token with positions "all"."""
    api, url = client(steered.server), steered.server.url
    context, continuation = "the cat", " sat on"
    ids = httpx.post(f"{url}/tokenize", json={"prompt": context}).json()["tokens"]
    tail = httpx.post(f"{url}/tokenize", json={"prompt": continuation, "add_special_tokens": False}).json()["tokens"]
    for positions in ("fv", "all"):
        steering = {"relations": {steered.vector: 1.0}, "positions": positions}
        echoed = api.completions.create(model=steered.base, prompt=ids + tail, max_tokens=0, echo=True, logprobs=1,
                                        extra_body={"steering": steering})
        values = echoed.choices[0].logprobs.token_logprobs  # type: ignore[union-attr]
        assert values is not None
        score = httpx.post(f"{url}/score", json={"prompt": context, "continuations": [continuation], **steering})
        assert score.status_code == 200, score.text
        tokens = score.json()["scores"][0]["tokens"]
        assert [t["id"] for t in tokens] == tail
        overlap = len(tail) if positions == "all" else 1
        for index in range(overlap):
            assert values[len(ids) + index] == pytest.approx(tokens[index]["logprob"], abs=1e-4)
    plain = api.completions.create(model=steered.base, prompt=ids + tail, max_tokens=0, echo=True, logprobs=1)
    unsteered = httpx.post(f"{url}/score", json={"prompt": context, "continuations": [continuation]}).json()
    assert plain.choices[0].logprobs.token_logprobs[len(ids):] == pytest.approx(  # type: ignore[union-attr]
        [t["logprob"] for t in unsteered["scores"][0]["tokens"]], abs=1e-4)


def test_logprobs_of_generated_tokens(steered: Steered) -> None:
    api = client(steered.server)
    result = api.completions.create(model=steered.preset, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    logprobs = result.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs is not None and logprobs.token_logprobs is not None
    assert "".join(logprobs.tokens or []) == result.choices[0].text
    for value, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert value is not None and top is not None and 3 <= len(top) <= 4
        assert value == max(top.values())  # greedy: the chosen token is the likeliest


def test_streaming_sync_and_async_equal_the_whole_answer(steered: Steered) -> None:
    api = client(steered.server)
    asked: dict[str, Any] = {"model": steered.preset, "prompt": [PROMPT, "a dog"], "max_tokens": 10,
                             "temperature": 0}
    whole = api.completions.create(**asked)
    texts = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    usage = None
    receipts = []
    for chunk in api.completions.create(stream=True, stream_options={"include_usage": True}, **asked):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
                receipts.append((chunk.model_extra or {})["steering"])  # each choice's last chunk: its receipt
        usage = chunk.usage or usage
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert finish == {c.index: c.finish_reason for c in whole.choices}
    assert receipts == [(whole.model_extra or {})["steering"]] * 2 and receipts[0]["layers"]
    vectors = [v for layer in receipts[0]["layers"].values() for v in layer["vectors"]]
    assert {v["name"] for v in vectors} == set(receipts[0]["relations"]) and all(len(v["digest"]) == 16
                                                                                  for v in vectors)
    assert usage is not None and whole.usage is not None and usage.total_tokens == whole.usage.total_tokens

    async def pieces() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{steered.server.url}/v1", api_key="unused") as aapi:
            stream = await aapi.completions.create(stream=True, **{**asked, "prompt": PROMPT})
            return [chunk.choices[0].text async for chunk in stream if chunk.choices]

    assert "".join(asyncio.run(pieces())) == whole.choices[0].text


def test_async_client_runs_requests_concurrently(steered: Steered) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{steered.server.url}/v1", api_key="unused") as aapi:
            calls = [aapi.completions.create(model=steered.preset, prompt=f"{PROMPT} {i}", max_tokens=6,
                                             temperature=0) for i in range(6)]
            return [result.choices[0].text for result in await asyncio.gather(*calls)]

    texts = asyncio.run(run())
    one = client(steered.server).completions.create(model=steered.preset, prompt=f"{PROMPT} 3", max_tokens=6,
                                                    temperature=0)
    assert texts[3] == one.choices[0].text


def test_options_that_would_change_results_are_refused_by_name(steered: Steered) -> None:
    api = client(steered.server)
    base: dict[str, Any] = {"model": steered.base, "prompt": PROMPT, "max_tokens": 4}
    for extra, param in [({"frequency_penalty": 0.5}, "frequency_penalty"), ({"best_of": 3}, "best_of"),
                         ({"logit_bias": {"5": 1.0}}, "logit_bias"), ({"suffix": "!"}, "suffix"),
                         ({"extra_body": {"guided_json": {}}}, "guided_json"), ({"logprobs": 21}, "logprobs"),
                         ({"max_tokens": 100_000}, "max_tokens"), ({"prompt": [10**7]}, "prompt"),
                         ({"extra_body": {"steering": {"relations": {"nope": 1}}}}, "relations.nope")]:
        with pytest.raises(openai.APIStatusError) as refused:
            api.completions.create(**{**base, **extra})
        assert refused.value.status_code in (404, 422), extra
        assert refused.value.body["param"] == param, (extra, refused.value.body)  # type: ignore[index]
    harmless = api.completions.create(user="someone", presence_penalty=0, best_of=1, **base)
    assert harmless.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.UnprocessableEntityError) as twice:
        api.completions.create(model=steered.preset, prompt=PROMPT, max_tokens=4,
                               extra_body={"steering": {"relations": {steered.vector: 1}}})
    assert twice.value.body["param"] == "steering"  # type: ignore[index]


def test_errors_are_the_sdks_typed_exceptions(steered: Steered) -> None:
    api = client(steered.server, max_retries=0)
    with pytest.raises(openai.NotFoundError) as unknown:
        api.completions.create(model="gpt-4", prompt=PROMPT)
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.UnprocessableEntityError) as no_template:  # the tiny tokenizer has no chat template
        api.chat.completions.create(model=steered.base, messages=[{"role": "user", "content": "hi"}])
    assert no_template.value.param == "messages" and "chat template" in no_template.value.message


def test_a_preset_whose_vector_is_gone_is_reported_and_refused_never_unsteered(steered: Steered) -> None:
    api = client(steered.server, max_retries=0)
    assert httpx.delete(f"{steered.server.url}/admin/vectors/{steered.vector}",
                        headers=steered.admin()).status_code == 200
    card = api.models.retrieve(steered.preset)
    assert (card.model_extra or {})["steering"]["status"] == "broken"
    assert (card.model_extra or {})["steering"]["missing"] == [steered.vector]
    with pytest.raises(openai.ConflictError) as refused:
        api.completions.create(model=steered.preset, prompt=PROMPT, max_tokens=4)
    assert steered.vector in refused.value.message
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model=f"{steered.base}+{steered.vector}", prompt=PROMPT, max_tokens=4)


# ------------------------------------------------------------------------------------ status table, in process
def _harness_client(harness: Harness, max_retries: int) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=harness.app)
    return openai.AsyncOpenAI(base_url="http://harness/v1", api_key="unused", max_retries=max_retries,
                              http_client=httpx.AsyncClient(transport=transport, base_url="http://harness"))


def test_a_full_queue_is_a_rate_limit_the_sdk_retries_after_the_servers_delay(tmp_path: Path) -> None:
    harness = make_harness(tmp_path)
    refusals: list[float] = []
    submit = harness.backend.submit

    def full_once(rows: Any) -> None:
        refusals.append(time.monotonic())
        if len(refusals) == 1:
            raise QueueFull("3 requests are waiting; the queue limit is 3", retry_after_s=1)
        submit(rows)

    harness.backend.submit = full_once  # type: ignore[method-assign]

    async def run() -> tuple[str, int]:
        async with _harness_client(harness, max_retries=2) as api:
            raw = await api.completions.with_raw_response.create(model="scripted", prompt="Q:", max_tokens=40)
            return raw.parse().choices[0].text, raw.retries_taken

    try:
        text, retries = asyncio.run(run())
        assert text.endswith(" [plain]") and retries == 1 and len(refusals) == 2
        assert refusals[1] - refusals[0] >= 0.9  # the SDK waited for Retry-After: 1, not its own backoff

        async def refused() -> openai.RateLimitError:
            async with _harness_client(harness, max_retries=0) as api:
                harness.backend.submit = lambda rows: (_ for _ in ()).throw(  # type: ignore[method-assign]
                    QueueFull("full", retry_after_s=4))
                with pytest.raises(openai.RateLimitError) as error:
                    await api.completions.create(model="scripted", prompt="x")
                return error.value

        error = asyncio.run(refused())
        assert error.response.headers["retry-after"] == "4" and error.body["type"] == "queue_full"  # type: ignore[index]
    finally:
        harness.runtime.stop()


def test_not_ready_is_a_503_with_retry_after(tmp_path: Path) -> None:
    harness = make_harness(tmp_path)
    harness.backend.failure = "the engine failed: test"

    async def run() -> openai.InternalServerError:
        async with _harness_client(harness, max_retries=0) as api:
            with pytest.raises(openai.InternalServerError) as error:
                await api.completions.create(model="scripted", prompt="Q:")
            return error.value

    try:
        error = asyncio.run(run())
        assert error.status_code == 503 and error.response.headers["retry-after"] == "5"
        assert error.body == {"type": "not_ready", "message": "the engine failed: test", "param": None, "code": None}
    finally:
        harness.runtime.stop()


def test_tokenizer_routes_round_trip(live_server: LiveServer) -> None:
    url = live_server.url
    tokens = httpx.post(f"{url}/tokenize", json={"prompt": PROMPT}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    assert httpx.post(f"{url}/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": PROMPT}
    info = httpx.get(f"{url}/tokenizer_info").json()
    assert info["eos_token"] == "</s>" and info["chat_template"] is None  # the tiny tokenizer has none
    refused = httpx.post(f"{url}/detokenize", json={"tokens": [10**9]})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "tokens"


def test_input_with_lone_surrogates_gets_a_4xx_not_a_500(live_server: LiveServer) -> None:
    body = '{"prompt": "x", "relations": {"\\ud800": 1}}'
    for path in ("/complete", "/score"):
        extra = ', "continuations": [" y"]}' if path == "/score" else "}"
        response = httpx.post(f"{live_server.url}{path}", content=body[:-1] + extra,
                              headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, response.text
        assert response.json()["error"]["param"].startswith("relations.")
