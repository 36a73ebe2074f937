"""Todd et al.'s in-context prompts, with configurable prefixes and separators, and the chat form of a query.

A demonstration is ``"Q: x\\nA: y\\n\\n"`` (y the primary answer), the query ``"Q: x\\nA:"``; an answer token is
the first token of ``" " + y`` for any accepted answer y. Models whose tokenizer adds no BOS get its BOS (or EOS)
text prepended, as in the reference code.

Most users reach a model through its chat template, where the query is a user turn holding the word alone and the
answer starts the assistant's turn (no leading space, often capitalised): :func:`chat_prompts` renders that form
exactly as the server renders ``messages`` (``add_generation_prompt``), so a vector can be trained and judged on it.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

from transformers import PreTrainedTokenizerBase

from app.errors import InvalidInput
from app.fv.pairs import Pair

DEFAULT_SHOTS = 10


@dataclass(frozen=True)
class Template:
    input_prefix: str = "Q:"
    output_prefix: str = "A:"
    pair_separator: str = "\n"
    example_separator: str = "\n\n"

    def demonstration(self, pair: Pair) -> str:
        return f"{self.input_prefix} {pair.input}{self.pair_separator}{self.output_prefix} {pair.output}" + (
            self.example_separator
        )

    def query(self, text: str) -> str:
        return f"{self.input_prefix} {text}{self.pair_separator}{self.output_prefix}"

    def prompt(self, demonstrations: list[Pair], query: str, prefix: str = "") -> str:
        return prefix + "".join(self.demonstration(pair) for pair in demonstrations) + self.query(query)

    def describe(self) -> str:
        """Canonical JSON: part of cache keys and vector metadata."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class PromptItem:
    """One prompt and the first tokens of the answers it may produce (distinct; the primary answer's first)."""

    text: str
    answer_tokens: tuple[int, ...]
    pair: Pair

    @property
    def answer_token(self) -> int:
        """The primary answer's first token (what causal mediation measures)."""
        return self.answer_tokens[0]


def bos_prefix(tokenizer: PreTrainedTokenizerBase, adds_bos: bool) -> str:
    if adds_bos:
        return ""
    return str(tokenizer.bos_token or tokenizer.eos_token or "")


def answer_token(tokenizer: PreTrainedTokenizerBase, output: str) -> int:
    """First token of ``" " + output`` (how the answer follows ``"A:"``)."""
    ids: list[int] = tokenizer(" " + output, add_special_tokens=False).input_ids
    return ids[0]


def answer_tokens(tokenizer: PreTrainedTokenizerBase, pair: Pair) -> tuple[int, ...]:
    """The distinct first tokens of every accepted answer of ``pair``, the primary answer's first."""
    return tuple(dict.fromkeys(answer_token(tokenizer, answer) for answer in pair.answers))


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_query(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """One user turn holding ``text``, rendered by the tokenizer's chat template up to the assistant's header."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    return str(rendered)


def chat_answer_tokens(tokenizer: PreTrainedTokenizerBase, pair: Pair) -> tuple[int, ...]:
    """The distinct first tokens an assistant's answer may start with: every accepted answer as written and
    capitalised, bare or after a space (the primary answer as written first). A leading space whose first token is
    the space alone (a character-level tokenizer) is left out: it says nothing about the word."""
    firsts: list[int] = []
    for answer in pair.answers:
        for form in (answer, answer[:1].upper() + answer[1:]):
            firsts.append(tokenizer(form, add_special_tokens=False).input_ids[0])
            spaced = tokenizer(" " + form, add_special_tokens=False).input_ids[0]
            if str(tokenizer.decode([spaced])).strip():
                firsts.append(spaced)
    return tuple(dict.fromkeys(firsts))


def chat_prompts(tokenizer: PreTrainedTokenizerBase, queries: list[Pair]) -> list[PromptItem]:
    """Zero-shot prompts in chat form: the user turn is the input word alone."""
    return [PromptItem(chat_query(tokenizer, q.input), chat_answer_tokens(tokenizer, q), q) for q in queries]


def icl_prompt_bound(tokenizer: PreTrainedTokenizerBase, template: Template, prefix: str, demo_pool: list[Pair],
                     queries: list[Pair], shots: int) -> int:
    """An upper bound on the tokens of any prompt :func:`icl_prompts` can build from these pairs: the prefix, the
    ``shots`` longest demonstrations and the longest query, counted apart, plus one token a junction (where two
    parts could tokenize differently together). Lets a job refuse before any forward what it would build."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    demos = sorted((count(template.demonstration(pair)) for pair in demo_pool), reverse=True)[:shots]
    query = max((count(template.query(pair.input)) for pair in queries), default=0)
    return len(tokenizer(prefix).input_ids) + sum(demos) + query + len(demos) + 1


def check_prompt_bound(bound: int, limit: int, shots: int, param: str = "shots") -> None:
    """Refuse (422, naming ``param`` and the limit) prompts that may run over ``limit`` tokens."""
    if bound > limit:
        raise InvalidInput(f"{shots}-shot prompts of these pairs run up to {bound} tokens; the prompt limit is "
                           f"{limit} (use fewer shots or shorter pairs)", param=param)


def icl_prompts(
    tokenizer: PreTrainedTokenizerBase,
    template: Template,
    prefix: str,
    demo_pool: list[Pair],
    queries: list[Pair],
    rng: random.Random,
    shots: int = DEFAULT_SHOTS,
    shuffle_labels: bool = False,
) -> list[PromptItem]:
    """One ``shots``-shot prompt per query, demonstrations drawn without replacement (never the query itself).

    ``shuffle_labels`` permutes the demonstrations' outputs among themselves (the corrupted prompts of
    causal mediation); the query and its answer stay untouched.
    """
    items = []
    for query in queries:
        pool = [pair for pair in demo_pool if pair.input != query.input]
        demos = rng.sample(pool, min(shots, len(pool)))
        if shuffle_labels:
            outputs = [pair.output for pair in demos]
            rng.shuffle(outputs)
            demos = [Pair(pair.input, output) for pair, output in zip(demos, outputs, strict=True)]
        items.append(PromptItem(template.prompt(demos, query.input, prefix), answer_tokens(tokenizer, query), query))
    return items


def zero_shot_prompts(
    tokenizer: PreTrainedTokenizerBase, template: Template, prefix: str, queries: list[Pair]
) -> list[PromptItem]:
    return [PromptItem(prefix + template.query(q.input), answer_tokens(tokenizer, q), q) for q in queries]
