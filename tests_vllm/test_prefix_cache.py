"""No steered KV is reused by a request with other steering: with vLLM's prefix caching on, a steered request and
then an unsteered one sharing its prefix (and the reverse) each equal a fresh run. The negative control shows the
trap is real: without fvsteer's salt, a prefix steered at every position is reused unsteered and changes the
answer."""

from __future__ import annotations

import functools
import secrets
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from app.engine.vllm_backend import cache_salt
from tests.conftest import LiveServer
from tests_vllm.conftest import Vllm, complete, embedded_location

# Long enough to fill several KV blocks that two requests share.
PREFIX = ("The following is a list of words and their opposites, written by a careful teacher for a class of "
          "young students who are learning English. Each line gives one word and then its opposite. " * 3)
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
    first, second = f"{PREFIX}{tag}\nQ: hot\nA:", f"{PREFIX}{tag}\nQ: big\nA:"
    expected_plain = fresh(vllm, ids(second), {})
    expected_steered = fresh(vllm, ids(second), STEER)
    assert expected_plain != expected_steered  # the steering changes this answer

    before = hits(vllm)
    complete(vllm_front, prompt=first, max_new_tokens=12, **STEER)  # caches a prefix steered at every position
    assert complete(vllm_front, prompt=second, max_new_tokens=12)["text"] == expected_plain

    tag = secrets.token_hex(3)
    first, second = f"{PREFIX}{tag}\nQ: cold\nA:", f"{PREFIX}{tag}\nQ: fast\nA:"
    expected_plain, expected_steered = fresh(vllm, ids(second), {}), \
        fresh(vllm, ids(second), STEER)
    complete(vllm_front, prompt=first, max_new_tokens=12)  # caches the prefix unsteered
    assert complete(vllm_front, prompt=second, max_new_tokens=12, **STEER)["text"] == expected_steered
    # The cache was in play: requests with the same steering shared the prefix.
    same = complete(vllm_front, prompt=second + " ", max_new_tokens=12, **STEER)
    assert same["steering"] is not None and hits(vllm) > before


def test_without_the_salt_a_steered_prefix_is_reused_unsteered(vllm: Vllm, vllm_front: LiveServer) -> None:
    """The negative control, sent to vLLM directly with no salt: the unsteered request reuses the KV of blocks
    computed with the vector added, and its answer changes."""
    tag = secrets.token_hex(3)
    first, second = ids(f"{PREFIX}{tag}\nQ: hot\nA:"), ids(f"{PREFIX}{tag}\nQ: big\nA:")
    expected = fresh(vllm, second, {})
    vllm.complete(first, vllm.spec(STEER["relations"], positions="all"), max_tokens=12)
    contaminated = vllm.complete(second, None, max_tokens=12)["choices"][0]["text"]
    assert contaminated != expected
    # fvsteer's salt differs for every steering that changes the KV, so this cannot happen through it.
    spec = vllm.spec(STEER["relations"], positions="all")
    assert cache_salt(spec, len(first)) != cache_salt(vllm.spec({"antonym": 2.0}, positions="all"), len(first))
