"""Todd et al.'s prompts: exact strings, BOS prefix, answer token, demonstrations and shuffled labels."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from app.fv.pairs import Pair
from app.fv.prompts import (
    DEFAULT_SHOTS,
    Template,
    answer_token,
    bos_prefix,
    icl_prompts,
    zero_shot_prompts,
)
from app.model.adapter import tokenizer_adds_bos
from tests.tiny_models import tiny_tokenizer

POOL = [Pair(f"in{index}", f"out{index}") for index in range(30)]


def demo_blocks(text: str, template: Template = Template()) -> list[str]:
    """The demonstrations of a prompt (everything before the query), one string each."""
    body = text[: text.rindex(template.input_prefix + " ")]
    return [block + template.example_separator for block in body.split(template.example_separator) if block]


def test_exact_todd_strings() -> None:
    template = Template()
    assert template.demonstration(Pair("hot", "cold")) == "Q: hot\nA: cold\n\n"
    assert template.query("up") == "Q: up\nA:"
    prompt = template.prompt([Pair("hot", "cold"), Pair("big", "small")], "up", prefix="<s>")
    assert prompt == "<s>Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: up\nA:"
    assert template.prompt([], "up") == "Q: up\nA:"


def test_custom_template() -> None:
    template = Template(input_prefix="Input:", output_prefix="Output:", pair_separator=" | ", example_separator="\n")
    assert template.prompt([Pair("a", "b")], "c") == "Input: a | Output: b\nInput: c | Output:"
    described = json.loads(template.describe())
    assert described == {"input_prefix": "Input:", "output_prefix": "Output:", "pair_separator": " | ",
                         "example_separator": "\n"}
    assert template.describe() != Template().describe()
    assert Template().describe() == Template().describe()


def test_bos_prefix_only_when_the_tokenizer_adds_none() -> None:
    plain = tiny_tokenizer()
    with_bos = tiny_tokenizer(add_bos=True)
    assert not tokenizer_adds_bos(plain)
    assert tokenizer_adds_bos(with_bos)
    assert bos_prefix(plain, tokenizer_adds_bos(plain)) == "<s>"
    assert bos_prefix(with_bos, tokenizer_adds_bos(with_bos)) == ""
    # The prefixed prompt encodes to exactly one BOS either way.
    for tokenizer in (plain, with_bos):
        prefix = bos_prefix(tokenizer, tokenizer_adds_bos(tokenizer))
        ids = tokenizer(prefix + Template().query("x")).input_ids
        assert ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.bos_token_id) == 1


def test_bos_prefix_falls_back_to_eos() -> None:
    tokenizer = tiny_tokenizer()
    tokenizer.bos_token = None
    assert bos_prefix(tokenizer, False) == "</s>"


@pytest.mark.parametrize("add_bos", [False, True])
def test_answer_token_is_the_first_token_of_space_output(add_bos: bool) -> None:
    tokenizer = tiny_tokenizer(add_bos=add_bos)
    space = tokenizer(" ", add_special_tokens=False).input_ids[0]
    assert answer_token(tokenizer, "cold") == space  # char tokenizer: " cold" starts with " "
    # Equals the token that follows "A:" when the full answer is appended to the prompt.
    query = Template().query("hot")
    full = tokenizer(query + " cold", add_special_tokens=False).input_ids
    prompt = tokenizer(query, add_special_tokens=False).input_ids
    assert full[: len(prompt)] == prompt
    assert full[len(prompt)] == answer_token(tokenizer, "cold")
    assert answer_token(tokenizer, "cold") != tokenizer.bos_token_id


def test_icl_prompts_shape_and_demos() -> None:
    tokenizer = tiny_tokenizer()
    template = Template()
    queries = POOL[:8]
    items = icl_prompts(tokenizer, template, "<s>", POOL, queries, random.Random(0))
    assert len(items) == len(queries)
    pool_blocks = {template.demonstration(pair) for pair in POOL}
    for item, query in zip(items, queries, strict=True):
        assert item.pair == query
        assert item.text.startswith("<s>Q: ")
        assert item.text.endswith(template.query(query.input))
        assert item.answer_token == answer_token(tokenizer, query.output)
        blocks = demo_blocks(item.text[len("<s>"):])
        assert len(blocks) == DEFAULT_SHOTS
        assert len(set(blocks)) == DEFAULT_SHOTS  # without replacement
        assert set(blocks) <= pool_blocks
        assert template.demonstration(query) not in blocks  # never the query itself
        assert all(not block.startswith(f"Q: {query.input}\n") for block in blocks)


def test_demos_never_include_the_query_even_when_the_pool_is_small() -> None:
    pool = POOL[:4]
    items = icl_prompts(tiny_tokenizer(), Template(), "", pool, pool, random.Random(1), shots=10)
    for item in items:
        blocks = demo_blocks(item.text)
        assert len(blocks) == 3  # the pool minus the query
        assert all(not block.startswith(f"Q: {item.pair.input}\n") for block in blocks)


def test_icl_prompts_are_rng_deterministic() -> None:
    tokenizer = tiny_tokenizer()
    first = icl_prompts(tokenizer, Template(), "", POOL, POOL[:5], random.Random(42), shots=4)
    again = icl_prompts(tokenizer, Template(), "", POOL, POOL[:5], random.Random(42), shots=4)
    other = icl_prompts(tokenizer, Template(), "", POOL, POOL[:5], random.Random(43), shots=4)
    assert first == again
    assert [item.text for item in first] != [item.text for item in other]


def test_shuffled_labels_permute_outputs_only() -> None:
    tokenizer = tiny_tokenizer()
    template = Template()
    clean = icl_prompts(tokenizer, template, "", POOL, POOL[:6], random.Random(5))
    shuffled = icl_prompts(tokenizer, template, "", POOL, POOL[:6], random.Random(5), shuffle_labels=True)
    lookup = {pair.input: pair.output for pair in POOL}
    changed = 0
    for clean_item, item in zip(clean, shuffled, strict=True):
        assert item.pair == clean_item.pair and item.answer_token == clean_item.answer_token
        assert item.text.endswith(template.query(item.pair.input))
        blocks = [block[: -len(template.example_separator)] for block in demo_blocks(item.text)]
        inputs = [block.split("\n")[0].removeprefix("Q: ") for block in blocks]
        outputs = [block.split("\n")[1].removeprefix("A: ") for block in blocks]
        if clean_item is clean[0]:  # same rng state: the same demonstrations were drawn, in the same order
            clean_blocks = [block[: -len(template.example_separator)] for block in demo_blocks(clean_item.text)]
            assert inputs == [block.split("\n")[0].removeprefix("Q: ") for block in clean_blocks]
        assert len(set(inputs)) == len(inputs) and item.pair.input not in inputs
        # The outputs are a permutation of the demonstrations' own outputs.
        assert Counter(outputs) == Counter(lookup[x] for x in inputs)
        changed += sum(output != lookup[x] for x, output in zip(inputs, outputs, strict=True))
    assert changed > 0, "no label was moved in six 10-shot prompts"


def test_zero_shot_prompts() -> None:
    tokenizer = tiny_tokenizer()
    items = zero_shot_prompts(tokenizer, Template(), "<s>", POOL[:3])
    assert [item.text for item in items] == ["<s>Q: in0\nA:", "<s>Q: in1\nA:", "<s>Q: in2\nA:"]
    assert [item.answer_token for item in items] == [answer_token(tokenizer, p.output) for p in POOL[:3]]
