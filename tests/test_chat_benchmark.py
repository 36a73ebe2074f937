"""The chat benchmark's pieces (benchmarks/chat.py) on a tiny random model: greedy generation matches the model's own
greedy ``generate``, the vector is added where the server's ``fv`` positions add it, and the first-word rule."""

from __future__ import annotations

import torch

from app.fv.forward import encode_left_padded, last_token_logits
from app.fv.pairs import Pair
from app.model.adapter import adapt
from app.model.steering import BatchSteering, steered
from benchmarks import chat
from tests.tiny_models import CHAT_TEMPLATE, tiny_model, tiny_tokenizer


def test_first_word_rule_takes_the_first_word_case_folded() -> None:
    pair = Pair("hot", "cold", ("cool",))
    assert chat.is_right(" Cold.", pair) and chat.is_right('"cool", of course', pair)
    assert chat.is_right("\nCOLD", pair)
    assert not chat.is_right("The opposite is cold", pair) and not chat.is_right("...", pair)
    assert chat.first_word(" New York!") == "new" and chat.first_word("don't go") == "don't"
    assert chat.is_right("new york", Pair("city", "New York"))


def test_greedy_generation_matches_generate_and_the_vector_moves_the_first_step() -> None:
    network, tokenizer = tiny_model("llama"), tiny_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    adapter = adapt(network, tokenizer)
    prompts = ["Q: ab\nA:", "Q: abcdef\nA:", tokenizer.apply_chat_template(
        [{"role": "user", "content": "xy"}], add_generation_prompt=True, tokenize=False)]
    ids, mask = encode_left_padded(tokenizer, prompts, torch.device("cpu"))
    expected = network.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1] :]
    got = chat.greedy(adapter, tokenizer, prompts, None, new_tokens=4)
    assert got == [tokenizer.decode(row, skip_special_tokens=True) for row in expected.tolist()]

    vector = torch.randn(adapter.d_model, generator=torch.Generator().manual_seed(0)) * 20
    at = torch.zeros(ids.shape, dtype=torch.bool)
    at[:, -1] = True
    with torch.inference_mode(), steered(adapter, BatchSteering({1: vector.expand(len(prompts), -1)}, at)):
        first = last_token_logits(adapter, ids, mask).argmax(dim=-1)
    steered_text = chat.greedy(adapter, tokenizer, prompts, (1, vector), new_tokens=2)
    assert [text[:1] for text in steered_text] == [tokenizer.decode([token]) for token in first.tolist()]
    assert steered_text != [text[:2] for text in got]  # a vector this large changes the answer
    # The second token: the vector again at the first generated token (the fv policy), over the whole sequence.
    longer = torch.cat([ids, first[:, None]], dim=1)
    both = torch.cat([mask, torch.ones_like(first[:, None])], dim=1)
    at = torch.zeros(longer.shape, dtype=torch.bool)
    at[:, -2:] = True
    with torch.inference_mode(), steered(adapter, BatchSteering({1: vector.expand(len(prompts), -1)}, at)):
        second = last_token_logits(adapter, longer, both).argmax(dim=-1)
    assert [text[1:2] for text in steered_text] == [tokenizer.decode([token]) for token in second.tolist()]


def test_report_pools_chat_rows_and_says_whether_the_gap_target_is_met() -> None:
    from benchmarks.finetune_report import chat_lines

    def row(raw: float, chat_steered: float) -> dict[str, object]:
        return {"n": 10, "vector": "x", "trained_on_chat": True, "raw": 0.1, "raw_steered": raw, "chat": 0.0,
                "chat_steered": chat_steered}

    close = chat_lines({"antonym": row(0.9, 0.85), "synonym": row(0.6, 0.6)}, {"antonym": "lexical"}, bank_size=2)
    text = "\n".join(close)
    assert "| **all** | 2 | 0.10 | 0.75 | 0.00 | 0.72 |" in text and "**-0.025**" in text and "**met**" in text
    far = "\n".join(chat_lines({"antonym": row(0.9, 0.3), "synonym": row(0.6, 0.4)}, {}, bank_size=2))
    assert "**missed**" in far
    partial = "\n".join(chat_lines({"antonym": row(0.9, 0.3), "synonym": row(0.6, 0.4)}, {}, bank_size=3))
    assert "not judged yet: measured for 2 of the 3 relations so far" in partial and "missed" not in partial
