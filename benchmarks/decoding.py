"""Do fine-tuned function vectors decode to their relation's words more often than mediation FVs?

Kang, Wu & Lu (2026) report that the logit lens of a *fine-tuned* function vector (``softmax(lm_head(final_norm(v)))``,
:func:`app.fv.vector.decode_vector`) puts the relation's own words among its top tokens more often than the lens of
the causal-mediation FV (Todd et al.). This module measures that for one relation (:func:`relation_row`) and pools
the relations per type (:func:`aggregate`); ``benchmarks/finetune_report.py``'s ``decoding`` part runs it on the
bank and writes the verdict.

Two hit rates per vector and k, each the share of the top k tokens that are

* **output words**: the first token of ``" " + answer`` (:func:`app.fv.prompts.answer_token`) for any accepted answer
  of any of the relation's pairs;
* **name words**: a word of the relation's name (split on ``-``) or of its direction in the relations README
  (stop words, the arrow and one-letter pieces left out).

Tokens and words are compared after :func:`normalize` (surrounding space and ``Ġ``/``▁`` markers stripped,
case-folded), so `` Paris``, ``Paris`` and ``ĠParis`` are one word. Everything but :func:`relation_row` takes plain
strings and numbers, so it tests without a model.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from app.fv.pairs import RELATIONS_DIR, Pair
from app.fv.prompts import answer_token
from app.fv.vector import decode_vector
from app.model.adapter import ModelAdapter

try:
    from benchmarks.intervals import LEVEL, RESAMPLES, SEED, bootstrap_interval, exact, sign_test_p
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from intervals import LEVEL, RESAMPLES, SEED, bootstrap_interval, exact, sign_test_p  # type: ignore[no-redef]

KS = (10, 20)
METRICS = ("output", "name")
METHODS = ("mediation", "finetuned")
MARKERS = "Ġ▁Ċ"  # byte-level BPE and SentencePiece word-start markers, as convert_ids_to_tokens shows them
# Function words of the directions ("noun → its hypernym", "verb → noun of the act or its result"): they say nothing
# about the relation, and tokens such as " the" or " of" top many lenses.
STOP_WORDS = frozenset({
    "a", "an", "the", "of", "to", "in", "on", "for", "with", "without", "or", "and", "its", "it", "by", "from", "as",
    "at", "is", "be", "not", "that", "what", "which", "who", "whose", "where", "when", "how", "same", "more", "most",
    "one", "than", "into", "their", "his", "her", "has", "have", "this", "these", "those"})
ALL = "all"


def normalize(token: str) -> str:
    """The comparable form of a token or word: whitespace and word-start markers stripped, case-folded."""
    return token.strip().lstrip(MARKERS).strip().casefold()


def readable(word: str) -> bool:
    """A normalized form worth matching: not empty (a bare-space first token) and not a byte fragment (``�``)."""
    return bool(word) and "\ufffd" not in word


def output_words(tokenizer: PreTrainedTokenizerBase, pairs: Iterable[Pair]) -> set[str]:
    """The normalized first tokens of every accepted answer of ``pairs``, as fine-tuning and evaluation see them.

    A first token that normalizes to nothing (a bare space) or to a byte fragment is left out: it would match every
    space token, or every fragment, of the lens.
    """
    answers = {answer for pair in pairs for answer in pair.answers}
    words = {normalize(str(tokenizer.decode([answer_token(tokenizer, answer)]))) for answer in answers}
    return {word for word in words if readable(word)}


def name_words(name: str, direction: str) -> set[str]:
    """Words of a relation's name and its README direction, normalized: ``noun-ness-adjective`` and
    ``adjective → adjective+ness noun`` give adjective, ness, noun. Letters only, so arrows, ``+``, ``/``, ``-`` and
    brackets split words; stop words and one-letter pieces are dropped."""
    words = {normalize(word) for word in re.findall(r"[^\W\d_]+", f"{name.replace('-', ' ')} {direction}")}
    return {word for word in words if len(word) > 1 and word not in STOP_WORDS}


def relation_directions() -> dict[str, str]:
    """``relation → direction`` (``adjective → comparative``) from the table of the relations README, read like
    :func:`app.fv.pairs.shipped_relation_types` reads the type column."""
    text = (RELATIONS_DIR / "README.md").read_text(encoding="utf-8")
    return {match[1]: match[2].strip()
            for match in re.finditer(r"^\| `([a-z-]+)` \| [^|]+ \| ([^|]+) \|", text, re.M)}


def hits(tokens: Sequence[str], words: set[str]) -> int:
    """How many of ``tokens`` are one of ``words`` once normalized."""
    return sum(normalize(token) in words for token in tokens)


def hit_rate(tokens: Sequence[str], words: set[str]) -> float:
    """The share of ``tokens`` (a lens's top k, so a share of k) that are one of ``words``."""
    return hits(tokens, words) / len(tokens) if tokens else 0.0


def rates(tokens: Sequence[str], outputs: set[str], names: set[str], ks: Sequence[int] = KS) -> dict[str, float]:
    """Both hit rates of one vector's top tokens (best first) at every k: ``{"output@10": …, "name@20": …}``."""
    if len(tokens) < max(ks):
        raise ValueError(f"{len(tokens)} tokens given; k up to {max(ks)} needs that many")
    return {f"{metric}@{k}": hit_rate(tokens[:k], words)
            for metric, words in (("output", outputs), ("name", names)) for k in ks}


def lens_tokens(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, vector: Tensor, k: int) -> list[str]:
    """The logit lens's top ``k`` tokens of ``vector``, best first (the served decode endpoint's computation)."""
    return [token for token, _ in decode_vector(adapter, tokenizer, vector, k)]


def relation_row(adapter: ModelAdapter, tokenizer: PreTrainedTokenizerBase, name: str, pairs: Sequence[Pair],
                 direction: str, vectors: Mapping[str, Tensor], ks: Sequence[int] = KS) -> dict[str, Any]:
    """One relation: each vector's top ``max(ks)`` tokens and its hit rates (``vectors`` maps a method, mediation or
    fine-tuned, to its vector). The lens ignores the layer a vector is added at, so only the vectors are needed."""
    outputs, names = output_words(tokenizer, pairs), name_words(name, direction)
    row: dict[str, Any] = {"relation": name, "output_words": len(outputs), "name_words": sorted(names)}
    for method, vector in vectors.items():
        top = lens_tokens(adapter, tokenizer, vector, max(ks))
        row[f"{method}_top"] = top
        row[method] = rates(top, outputs, names, ks)
    return row


def compare_group(rows: Sequence[Mapping[str, Any]], measure: str, resamples: int = RESAMPLES,
                  seed: int = SEED) -> dict[str, Any]:
    """One measure (``output@10``…) over a group of relations: both means, the mean difference fine-tuned −
    mediation with its paired bootstrap interval, and the sign counts with their exact p-value. Ties and signs are
    decided in whole tokens (rate × k), so float noise cannot make or break a tie."""
    k = int(measure.split("@")[1])
    tuned = [float(row["finetuned"][measure]) for row in rows]
    mediated = [float(row["mediation"][measure]) for row in rows]
    counts = [round(t * k) - round(m * k) for t, m in zip(tuned, mediated, strict=True)]
    differences = [count / k for count in counts]
    greater, less = sum(c > 0 for c in counts), sum(c < 0 for c in counts)
    low, high = bootstrap_interval(differences, resamples, seed)
    return {"n": len(rows), "mediation": sum(mediated) / len(rows), "finetuned": sum(tuned) / len(rows),
            "difference": exact(sum(differences) / len(rows)), "interval": [low, high], "greater": greater,
            "equal": len(rows) - greater - less, "less": less, "sign_p": sign_test_p(greater, less)}


def aggregate(rows: Iterable[Mapping[str, Any]], types: Mapping[str, str], ks: Sequence[int] = KS,
              resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Every measure per relation type (``types``: relation → type, unknown relations under ``?``) and over all
    relations (``"all"``): ``{measure: {type: compare_group(...)}}``, plus the settings that made it."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    everything = list(rows)
    for row in everything:
        groups[types.get(row["relation"], "?")].append(row)
    measures = [f"{metric}@{k}" for metric in METRICS for k in ks]
    summary: dict[str, Any] = {measure: {kind: compare_group(group, measure, resamples, seed)
                                         for kind, group in [*sorted(groups.items()), (ALL, everything)] if group}
                               for measure in measures}
    return {"measures": summary, "resamples": resamples, "seed": seed, "level": LEVEL}


def verdict(result: Mapping[str, Any]) -> str:
    """Whether a group's figures support the claim: ``holds`` (interval above 0), ``reversed`` (below 0) or
    ``not shown`` (the interval contains 0)."""
    low, high = result["interval"]
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "not shown"
