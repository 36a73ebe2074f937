"""The committed starter bank on the embedded model, served as `make serve` serves it: every relation the bank was
built from is shipped and loads as a fine-tuned vector (of the current file unless listed stale), relation weights
steer completions to the relation's answers, the fitted combiner answers analogies, and a fine-tune job sent through
the SDK on 20 pairs of a relation the bank lacks makes a vector that steers other pairs of that relation. Marked
``model`` (minutes)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Sequence

import httpx
import pytest
from fvsteer_client import Client

from app.fv.pairs import dataset_sha256, relation_pairs, shipped_relations, split_pairs
from tests.conftest import LiveServer, start_server, stop_server
from tests.test_pairs import BANK, BANK_RELATIONS, STALE_BANK_VECTORS

pytestmark = pytest.mark.model

# The committed bank (and its combiner) holds every shipped relation; a vector built from a relation file edited
# since is listed in STALE_BANK_VECTORS (tests/test_pairs.py checks that list without the model).
# Adjective → adverb, a word list of this test's own: the job trains the vector `adverb` from it (the bank's
# `adjective-adverb` vector is not used). The first 20 train; the rest check.
ADVERBS = [
    ("quick", "quickly"), ("slow", "slowly"), ("careful", "carefully"), ("quiet", "quietly"), ("loud", "loudly"),
    ("soft", "softly"), ("sad", "sadly"), ("easy", "easily"), ("bad", "badly"), ("kind", "kindly"),
    ("proud", "proudly"), ("brave", "bravely"), ("calm", "calmly"), ("clear", "clearly"), ("deep", "deeply"),
    ("fair", "fairly"), ("firm", "firmly"), ("gentle", "gently"), ("honest", "honestly"), ("neat", "neatly"),
    ("polite", "politely"), ("rapid", "rapidly"), ("rough", "roughly"), ("safe", "safely"), ("silent", "silently"),
    ("smooth", "smoothly"), ("strong", "strongly"), ("sudden", "suddenly"), ("sweet", "sweetly"),
    ("warm", "warmly"), ("wild", "wildly"), ("wise", "wisely"), ("bright", "brightly"), ("cheap", "cheaply"),
]


@pytest.fixture(scope="module")
def bank_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded model serving a copy of the committed bank (jobs may add vectors without touching the repo)."""
    workdir = tmp_path_factory.mktemp("bank")
    shutil.copytree(BANK, workdir / "vectors" / BANK.name)
    server = start_server(workdir, "embedded:smollm2-135m-instruct", admin_token=secrets.token_hex(16),
                          d_model=576, n_layers=30)
    yield server
    stop_server(server)


def right(text: str, expected: str | tuple[str, ...]) -> bool:
    """The answer starts with an accepted word (what follows it — a comma, a repeated suffix — is not judged)."""
    accepted = (expected,) if isinstance(expected, str) else expected
    return any(text.strip().lower().startswith(answer.lower()) for answer in accepted)


def answers(client: Client, pairs: Sequence[tuple[str, str | tuple[str, ...]]],
            relations: dict[str, float]) -> tuple[int, int]:
    """(steered right, unsteered right) over the pairs, greedy, the steered row and its baseline in one batch."""
    steered = unsteered = 0
    for x, y in pairs:
        completion = client.complete(f"Q: {x}\nA:", relations=relations, max_new_tokens=6, stop="\n",
                                     return_baseline=True)
        assert completion.baseline is not None
        steered += right(completion.text, y)
        unsteered += right(completion.baseline.text, y)
    return steered, unsteered


def test_every_bank_relation_loads_as_a_finetuned_vector(bank_server: LiveServer) -> None:
    with Client(bank_server.url, admin_token=bank_server.admin_token) as client:
        listing = client.admin.list_vectors()
    assert not listing.refused, listing.refused
    finetuned = {vector.name: vector for vector in listing.vectors if vector.method == "finetuned"}
    assert set(BANK_RELATIONS) <= set(shipped_relations())
    assert set(BANK_RELATIONS) <= set(finetuned)
    for name in BANK_RELATIONS:
        stale = finetuned[name].dataset_sha256 != dataset_sha256(relation_pairs(name))
        assert stale == (name in STALE_BANK_VECTORS), f"{name}: stale {stale}, listed {name in STALE_BANK_VECTORS}"
        metrics = finetuned[name].metrics
        assert metrics["holdout_top1_after"] >= metrics["holdout_top1_before"]


# Three relations whose bank vectors hold 0.92-1.0 of their hold-out pairs (`make vectors`' table), the flagship
# `antonym` among them (rewritten in issue 30 with everyday opposites and accepted answers: 0.94 of 18 hold-out pairs,
# 10-shot prompting 0.72). A steered answer counts when it starts with any accepted answer.
@pytest.mark.parametrize("relation", ["antonym", "present-past", "country-adjective"])
def test_relation_weights_steer_to_the_relation(bank_server: LiveServer, relation: str) -> None:
    test = [(pair.input, pair.answers) for pair in split_pairs(relation_pairs(relation), 0).test][:10]
    with Client(bank_server.url, timeout=300) as client:
        steered, unsteered = answers(client, test, {relation: 1.0})
    assert steered >= 4 and steered >= unsteered + 3, (relation, steered, unsteered)


def test_bank_vectors_steer_a_chat_turn(bank_server: LiveServer) -> None:
    """Through the real `openai` client on `/v1/chat/completions`, the user message the word alone: the antonym
    vector (trained on raw and chat-rendered prompts) answers the test pairs' opposites where the unsteered model
    does not, and `hot` gets `cold`."""
    import openai

    with Client(bank_server.url) as sdk:
        assert sdk.get_vector("antonym").metrics.get("chat"), "the committed antonym vector was not trained on chat"
    test = [(pair.input, pair.answers) for pair in split_pairs(relation_pairs("antonym"), 0).test][:10]
    client = openai.OpenAI(base_url=f"{bank_server.url}/v1", api_key="unused", timeout=300)
    model = httpx.get(f"{bank_server.url}/readyz", timeout=30).json()["model"]  # the base model's id

    def reply(word: str, steering: dict[str, object] | None) -> str:
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": word}], max_tokens=6,
            temperature=0, extra_body={"steering": steering} if steering else None)
        return chat.choices[0].message.content or ""

    antonym = {"relations": {"antonym": 1.0}}
    steered = sum(right(reply(x, antonym).strip(' "\''), y) for x, y in test)
    unsteered = sum(right(reply(x, None).strip(' "\''), y) for x, y in test)
    assert steered >= 5 and steered >= unsteered + 3, (steered, unsteered)
    assert right(reply("hot", antonym).strip(' "\''), "cold")


def test_analogies_use_the_fitted_combiner(bank_server: LiveServer) -> None:
    with Client(bank_server.url, timeout=300) as client:
        result = client.analogy("hot", "cold", "up", choices=["down", "above"])
    assert result.combiner == "affine" and set(BANK_RELATIONS) <= set(result.weights)
    # An opposite relation must be among the top two: with 103 relations the bank has three kinds of opposite, and
    # for hot:cold the 103-relation combiner puts `antonym-directional` (uptown → downtown, send → receive) first.
    top = [name for name, _ in result.top_relations(2)]
    assert result.answer == "down" and {"antonym", "antonym-binary", "antonym-directional"} & set(top), \
        result.top_relations(3)


def test_finetune_a_new_relation_through_the_sdk(bank_server: LiveServer) -> None:
    train, check = ADVERBS[:20], ADVERBS[20:]
    with Client(bank_server.url, timeout=300) as client:
        assert "adverb" not in {vector.name for vector in client.list_vectors()}
        # 80 epochs, not the default ceiling of 160: a bound on this test's time (the patience stops most relations
        # before 80 anyway), not a different recipe.
        job = client.finetune("adverb", pairs=[{"input": x, "output": y} for x, y in train], epochs=80)
        final = client.wait_for_job(job, timeout=600)
        assert final.state == "succeeded" and final.result is not None
        steered, unsteered = answers(client, check, {"adverb": 1.0})
    assert steered >= 0.4 * len(check) and steered >= unsteered + 4, (steered, unsteered, final.result["metrics"])
