"""``client.score`` and the admin presets of the SDK against a real server (tiny random llama), over HTTP.

Vectors and presets get unique names, so that these tests share the session server with the others.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence

import fvsteer_client as fv
import httpx
import pytest
from fvsteer_client.errors import error_from_response

from tests.conftest import LiveServer
from tests.test_sdk import PROMPT, Uploaded, unique, vector_bytes

CONTINUATIONS = [" cold", " warm", " hot", "x"]


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[fv.Client]:
    with fv.Client(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
        yield c


def upload(live_server: LiveServer, client: fv.Client, *, seed: int, layer: int) -> Uploaded:
    name = unique("score")
    content, vector = vector_bytes(live_server.d_model, seed=seed)
    client.admin.upload_vector(content, name=name, layer=layer)
    return Uploaded(name, layer, vector)


@pytest.fixture
def vector(live_server: LiveServer, client: fv.Client) -> Iterator[Uploaded]:
    """A fresh vector in the middle of the model, removed again afterwards."""
    uploaded = upload(live_server, client, seed=21, layer=live_server.n_layers // 2)
    yield uploaded
    with contextlib.suppress(fv.NotFoundError):
        client.admin.delete_vector(uploaded.name)


def check_consistent(score: fv.Score, continuations: Sequence[str]) -> None:
    """What every score must satisfy: one entry per continuation in order, totals that are the sums of the token
    log-probs, ``best`` the argmax, and usage that counts the tokens listed."""
    assert [s.continuation for s in score.scores] == list(continuations)
    for scored in score.scores:
        assert scored.tokens
        assert "".join(t.token for t in scored.tokens) == scored.continuation  # character-level tokenizer
        assert all(t.logprob <= 0.0 for t in scored.tokens)
        assert scored.logprob == pytest.approx(sum(t.logprob for t in scored.tokens), abs=1e-4)
    totals = [s.logprob for s in score.scores]
    assert score.best == totals.index(max(totals))
    assert score.best_score == score.scores[score.best]
    assert score.ranked()[0] == (score.best, score.best_score)
    assert [s.logprob for _, s in score.ranked()] == sorted(totals, reverse=True)
    assert score.usage.prompt_tokens > 0
    assert score.usage.continuation_tokens == sum(len(s.tokens) for s in score.scores)


def totals(score: fv.Score) -> list[float]:
    return [s.logprob for s in score.scores]


def test_score_unsteered(client: fv.Client) -> None:
    score = client.score(PROMPT, CONTINUATIONS)
    check_consistent(score, CONTINUATIONS)
    assert score.steering is None
    assert score.model
    assert score.usage.prompt_tokens == len(PROMPT)  # one token per character, no BOS
    # deterministic, and no relations (None or empty) is the same unsteered forward
    assert client.score(PROMPT, CONTINUATIONS) == score
    assert client.score(PROMPT, CONTINUATIONS, relations={}) == score


def test_score_steered_differs_from_unsteered(client: fv.Client, vector: Uploaded) -> None:
    plain = client.score(PROMPT, CONTINUATIONS)
    steered = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0})
    check_consistent(steered, CONTINUATIONS)
    assert steered.steering is not None
    assert steered.steering.relations == {vector.name: 1.0}
    assert set(steered.steering.layers) == {vector.layer}
    assert steered.steering.layers[vector.layer].norm == pytest.approx(float(vector.vector.norm()), rel=1e-3)
    assert max(abs(a - b) for a, b in zip(totals(plain), totals(steered), strict=True)) > 1e-3
    # under "fv" the prompt is never steered before its last token: the first continuation token sees the vector
    # only through the last prompt position, so every continuation's first token changes, and so does each total
    for before, after in zip(plain.scores, steered.scores, strict=True):
        assert before.tokens[0].id == after.tokens[0].id
        assert before.tokens[0].logprob != pytest.approx(after.tokens[0].logprob, abs=1e-6)
    assert client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0}) == steered


def test_score_matches_greedy_generation(client: fv.Client, vector: Uploaded) -> None:
    """What greedy generation produces, scoring calls greedy — unsteered, and steered the same way (FV policy)."""
    for relations in (None, {vector.name: 1.0}):
        completion = client.complete(PROMPT, relations=relations, max_new_tokens=4)
        assert completion.finish_reason == "length" and len(completion.text) == 4
        score = client.score(PROMPT, [completion.text, "zzzz"], relations=relations)
        check_consistent(score, [completion.text, "zzzz"])
        assert score.scores[0].greedy
        assert score.best == 0 or score.scores[1].greedy


def test_score_scale_layer_and_positions(live_server: LiveServer, client: fv.Client, vector: Uploaded) -> None:
    steered = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0})
    doubled = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0}, scale=2.0)
    check_consistent(doubled, CONTINUATIONS)
    assert doubled.steering is not None
    assert doubled.steering.layers[vector.layer].norm == pytest.approx(2 * float(vector.vector.norm()), rel=1e-3)
    assert totals(doubled) != pytest.approx(totals(steered), abs=1e-4)
    # the same composite through weight or scale is the same forward
    assert totals(client.score(PROMPT, CONTINUATIONS, relations={vector.name: 2.0})) == pytest.approx(
        totals(doubled), abs=1e-4)

    other = (vector.layer + 1) % live_server.n_layers
    moved = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0}, layer=other)
    check_consistent(moved, CONTINUATIONS)
    assert moved.steering is not None and set(moved.steering.layers) == {other}
    assert totals(moved) != pytest.approx(totals(steered), abs=1e-4)

    everywhere = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0}, positions="all")
    check_consistent(everywhere, CONTINUATIONS)
    assert totals(everywhere) != pytest.approx(totals(steered), abs=1e-4)


def test_a_single_string_is_one_continuation(client: fv.Client) -> None:
    one = client.score(PROMPT, " cold")
    assert [s.continuation for s in one.scores] == [" cold"]
    assert one.scores[0] == client.score(PROMPT, CONTINUATIONS).scores[0]


def test_score_errors(live_server: LiveServer, client: fv.Client, vector: Uploaded) -> None:
    missing = unique("missing")
    with pytest.raises(fv.NotFoundError) as unknown:
        client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0, missing: 0.5})
    assert unknown.value.status_code == 404
    assert unknown.value.type == "not_found"
    assert unknown.value.param == f"relations.{missing}"
    assert unknown.value.code is None
    assert missing in unknown.value.message

    with pytest.raises(fv.InvalidRequestError) as too_many:
        client.score(PROMPT, [f" c{i}" for i in range(33)])
    assert too_many.value.status_code == 422
    assert too_many.value.type == "invalid_request"
    assert too_many.value.param == "continuations"

    with pytest.raises(fv.InvalidRequestError) as empty:
        client.score(PROMPT, [" cold", ""])
    assert empty.value.param == "continuations.1"
    with pytest.raises(fv.InvalidRequestError) as no_layer:
        client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0}, layer=live_server.n_layers)
    assert no_layer.value.param == "layer"
    with pytest.raises(fv.InvalidRequestError) as none:
        client.score(PROMPT, [])
    assert none.value.param == "continuations"


def test_error_code_is_exposed(live_server: LiveServer) -> None:
    """The envelope's ``code`` (OpenAI's) reaches the typed exception: the server's own answer, read by the SDK."""
    response = httpx.post(f"{live_server.url}/v1/completions", json={"model": unique("nope"), "prompt": PROMPT},
                          timeout=30)
    exc = error_from_response(response)
    assert isinstance(exc, fv.NotFoundError)
    assert (exc.type, exc.code, exc.param) == ("not_found", "model_not_found", "model")
    assert exc.code == exc.envelope["error"]["code"]


def test_async_score_matches_sync(live_server: LiveServer, client: fv.Client, vector: Uploaded) -> None:
    plain = client.score(PROMPT, CONTINUATIONS)
    steered = client.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0})

    async def scenario() -> None:
        async with fv.AsyncClient(live_server.url, timeout=60) as c:
            assert await c.score(PROMPT, CONTINUATIONS) == plain
            # concurrent scores each come out as they would alone
            together = await asyncio.gather(*[
                c.score(PROMPT, CONTINUATIONS, relations={vector.name: 1.0} if i % 2 else None) for i in range(4)
            ])
            assert together == [plain, steered] * 2
            with pytest.raises(fv.NotFoundError) as unknown:
                await c.score(PROMPT, CONTINUATIONS, relations={"no-such-vector": 1.0})
            assert unknown.value.param == "relations.no-such-vector"
            with pytest.raises(fv.InvalidRequestError) as too_many:
                await c.score(PROMPT, ["x"] * 33)
            assert (too_many.value.status_code, too_many.value.param) == (422, "continuations")

    asyncio.run(scenario())


# --- presets (admin) -------------------------------------------------------------------------------------------------


def test_presets_round_trip(live_server: LiveServer, client: fv.Client, vector: Uploaded) -> None:
    name = unique("preset")
    spare = upload(live_server, client, seed=22, layer=0)
    try:
        created = client.admin.put_preset(name, {vector.name: 1.5, spare.name: -0.5}, scale=2.0, layer=1,
                                          positions="all", description="warm, not cold")
        assert (created.name, created.relations, created.scale, created.layer) == (
            name, {vector.name: 1.5, spare.name: -0.5}, 2.0, 1)
        assert (created.positions, created.description, created.status, created.missing) == (
            "all", "warm, not cold", "ok", [])
        assert created.created == created.updated
        assert created.created.tzinfo is not None
        assert {p.name: p for p in client.admin.list_presets()}[name] == created

        # a PUT replaces the whole preset: what is not given takes the default again; created stays
        replaced = client.admin.put_preset(name, {vector.name: 1.0})
        assert (replaced.relations, replaced.scale, replaced.layer, replaced.positions, replaced.description) == (
            {vector.name: 1.0}, 1.0, None, "fv", None)
        assert replaced.created == created.created and replaced.updated >= created.updated

        # a preset names vectors but owns none: deleting one leaves it broken, listed with what is missing
        client.admin.put_preset(name, {vector.name: 1.0, spare.name: 1.0})
        client.admin.delete_vector(spare.name)
        broken = {p.name: p for p in client.admin.list_presets()}[name]
        assert (broken.status, broken.missing) == ("broken", [spare.name])

        assert client.admin.delete_preset(name).deleted == name
        assert name not in {p.name for p in client.admin.list_presets()}
        with pytest.raises(fv.NotFoundError) as gone:
            client.admin.delete_preset(name)
        assert gone.value.param == "name"
    finally:
        with contextlib.suppress(fv.NotFoundError):
            client.admin.delete_preset(name)
        with contextlib.suppress(fv.NotFoundError):
            client.admin.delete_vector(spare.name)


def test_preset_errors(live_server: LiveServer, client: fv.Client, vector: Uploaded) -> None:
    missing = unique("missing")
    with pytest.raises(fv.NotFoundError) as unknown:
        client.admin.put_preset(unique("preset"), {missing: 1.0})
    assert unknown.value.param == f"relations.{missing}"
    with pytest.raises(fv.InvalidRequestError) as plus:
        client.admin.put_preset("base+vector", {vector.name: 1.0})
    assert plus.value.param == "name"
    with pytest.raises(fv.InvalidRequestError) as empty:
        client.admin.put_preset(unique("preset"), {})
    assert empty.value.param == "relations"
    with fv.Client(live_server.url, admin_token="") as anonymous, pytest.raises(fv.AuthenticationError):
        anonymous.admin.list_presets()


def test_async_presets(live_server: LiveServer, vector: Uploaded) -> None:
    name = unique("apreset")

    async def scenario() -> None:
        async with fv.AsyncClient(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
            saved = await c.admin.put_preset(name, {vector.name: -1.0}, description="async")
            assert (saved.name, saved.relations, saved.status) == (name, {vector.name: -1.0}, "ok")
            assert saved in await c.admin.list_presets()
            assert (await c.admin.delete_preset(name)).deleted == name
            assert name not in {p.name for p in await c.admin.list_presets()}

    asyncio.run(scenario())
