"""No steered KV is reused by a request with other steering: with vLLM's prefix caching on, a steered request and
then an unsteered one sharing its prefix (and the reverse) each equal a fresh run. The negative control shows the
trap is real: without fvsteer's salt, a prefix steered at every position is reused unsteered and changes the
answer."""

from __future__ import annotations

import functools
import secrets
from typing import Any

from fvsteer_vllm.spec import SteeringSpec
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.engine.vllm_backend import cache_salt
from tests.conftest import LiveServer
from tests_vllm.conftest import Vllm, complete, embedded_location

# Long enough to fill two KV blocks that two requests share (vLLM's CPU backend makes blocks of 128 tokens).
PREFIX = ("The following is a list of words and their opposites, written by a careful teacher for a class of "
          "young students who are learning English. Each line gives one word and then its opposite. " * 8)
STEER = {"relations": {"antonym": 2.0, "english-french": 1.0}, "positions": "all"}


@functools.cache
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(embedded_location())


def ids(text: str) -> list[int]:
    return list(tokenizer()(text).input_ids)


def fresh(vllm: Vllm, prompt_ids: list[int], body: dict[str, Any]) -> str:
    """A run that can reuse nothing: a salt no other request has."""
    spec = vllm.spec(body["relations"], positions=body.get("positions", "fv")) if body else None
    answer = vllm.complete(prompt_ids, spec, max_tokens=12, cache_salt=f"fresh-{secrets.token_hex(8)}")
    return str(answer["choices"][0]["text"])


def hits(vllm: Vllm) -> float:
    return vllm.metric("vllm:prefix_cache_hits_total")


def test_steered_then_unsteered_and_the_reverse_equal_fresh_runs(vllm: Vllm, vllm_front: LiveServer) -> None:
    tag = secrets.token_hex(3)  # prompts of this run only
    first, second = f"{tag} {PREFIX}\nQ: hot\nA:", f"{tag} {PREFIX}\nQ: big\nA:"
    expected_plain = fresh(vllm, ids(second), {})
    expected_steered = fresh(vllm, ids(second), STEER)
    assert expected_plain != expected_steered  # the steering changes this answer

    before = hits(vllm)
    complete(vllm_front, prompt=first, max_new_tokens=12, **STEER)  # caches a prefix steered at every position
    assert complete(vllm_front, prompt=second, max_new_tokens=12)["text"] == expected_plain

    tag = secrets.token_hex(3)
    first, second = f"{tag} {PREFIX}\nQ: cold\nA:", f"{tag} {PREFIX}\nQ: fast\nA:"
    expected_plain, expected_steered = fresh(vllm, ids(second), {}), \
        fresh(vllm, ids(second), STEER)
    complete(vllm_front, prompt=first, max_new_tokens=12)  # caches the prefix unsteered
    assert complete(vllm_front, prompt=second, max_new_tokens=12, **STEER)["text"] == expected_steered
    # The cache was in play: requests with the same steering shared the prefix.
    same = complete(vllm_front, prompt=second + " ", max_new_tokens=12, **STEER)
    assert same["steering"] is not None and hits(vllm) > before


def first_step(vllm: Vllm, prompt_ids: list[int], spec: SteeringSpec | None, salt: str | None) -> dict[str, float]:
    extra: dict[str, Any] = {"cache_salt": salt} if salt else {}
    answer = vllm.complete(prompt_ids, spec, max_tokens=1, logprobs=5, return_tokens_as_token_ids=True, **extra)
    return dict(answer["choices"][0]["logprobs"]["top_logprobs"][0])


def gap(a: dict[str, float], b: dict[str, float]) -> float:
    return max(abs(a[token] - b[token]) if token in b else float("inf") for token in a)


def test_without_the_salt_a_steered_prefix_is_reused_unsteered(vllm: Vllm) -> None:
    """The negative control, sent to vLLM directly: without a salt, an unsteered request reuses the KV of blocks
    computed with the vector added at every position, and its log-probabilities move; with fvsteer's salt on the
    steered request, they stay exactly those of a fresh run."""
    spec = vllm.spec(STEER["relations"], positions="all")
    for salted in (False, True):
        tag = secrets.token_hex(3)
        first, second = ids(f"{tag} {PREFIX}\nQ: hot\nA:"), ids(f"{tag} {PREFIX}\nQ: big\nA:")
        expected = first_step(vllm, second, None, f"fresh-{secrets.token_hex(8)}")
        vllm.complete(first, spec, max_tokens=4, **({"cache_salt": cache_salt(spec, len(first))} if salted else {}))
        seen = first_step(vllm, second, None, None)
        print(f"salted={salted}: first-step log-probability gap to a fresh run {gap(seen, expected):.2e}")
        if salted:
            assert gap(seen, expected) < 1e-4
        else:
            assert gap(seen, expected) > 1e-2  # the trap is real
