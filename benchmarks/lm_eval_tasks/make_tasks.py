"""Write local lm-evaluation-harness tasks for one shipped relation: its held-out pairs as a JSONL file and three
task YAMLs naming that file by its absolute path (nothing comes from the Hugging Face hub).

The pairs are the relation's *test* split, exactly as ``POST /vectors/{name}/evaluate`` splits a relation for a
vector made from it (``app.fv.pairs.split_pairs``, seed 0 unless the vector's metadata says otherwise), and each
prompt is evaluate's zero-shot prompt (``app.fv.prompts``: the tokenizer's BOS text when it adds none, then
``"Q: x\\nA:"``). The BOS text is read from the server (``/tokenizer_info``, ``/tokenize``) the way evaluate decides
it, or given with ``--prefix``.

    .venv/bin/python benchmarks/lm_eval_tasks/make_tasks.py antonym /tmp/fv_tasks --url http://127.0.0.1:8000
    lm-eval run --include_path /tmp/fv_tasks --tasks fvsteer_antonym_gen fvsteer_antonym_mc ...

Tasks: ``fvsteer_<relation>_gen`` (generate_until, exact match of the first word), ``fvsteer_<relation>_mc``
(multiple_choice over the split's distinct answers), ``fvsteer_<relation>_chat`` (the gen task for
``local-chat-completions``: the same pairs, ``"Q: x\\nA:"`` as the user message). Relation names become task names
with ``-`` replaced by ``_``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from app.fv.pairs import Pair, relation_pairs, split_pairs  # noqa: E402
from app.fv.prompts import Template as PromptTemplate  # noqa: E402

MAX_GEN_TOKS = 8  # the first word of every shipped answer fits in 8 tokens; generation stops at "\n" anyway
OTHER_ANSWERS = 3  # multiple choice: the answer, the query word itself, and this many other answers of the split
KINDS = ("gen", "mc", "chat")


@dataclass(frozen=True)
class Tasks:
    """What :func:`build` wrote: task names by kind, the data file, and the pairs in it."""

    names: dict[str, str]
    data_file: Path
    pairs: list[Pair]


def held_out_pairs(relation: str, seed: int = 0) -> list[Pair]:
    """The relation's test split as evaluate takes it for a vector made from the relation with ``seed``."""
    return split_pairs(relation_pairs(relation), seed).test


def bos_prefix_from_server(url: str) -> str:
    """``app.fv.prompts.bos_prefix`` over HTTP: no text when the tokenizer puts BOS first itself, else its BOS (or
    EOS) text."""
    with httpx.Client(base_url=url, timeout=30) as client:
        info = client.get("/tokenizer_info").raise_for_status().json()
        bos = info.get("bos_token")
        if bos:
            bos_id = client.post("/tokenize", json={"prompt": bos, "add_special_tokens": False}
                                 ).raise_for_status().json()["tokens"]
            first = client.post("/tokenize", json={"prompt": "a", "add_special_tokens": True}
                                ).raise_for_status().json()["tokens"]
            if len(bos_id) == 1 and first and first[0] == bos_id[0]:
                return ""
        return str(bos or info.get("eos_token") or "")


def first_word(text: str) -> str:
    return text.split()[0]


def choices_of(pair: Pair, answers: list[str], others: int | None, rng: random.Random) -> list[str]:
    """The multiple-choice options of one pair: its answer, its query word (a zero-shot prompt's likeliest wrong
    answer: the model repeats the query) and ``others`` other answers of the split (None: all of them), shuffled."""
    pool = [answer for answer in answers if answer not in (pair.output, pair.input)]
    picked = pool if others is None else rng.sample(pool, min(others, len(pool)))
    choices = list(dict.fromkeys([pair.output, pair.input, *picked]))
    rng.shuffle(choices)
    return choices


def build(relation: str, out_dir: Path, prefix: str, *, seed: int = 0, max_gen_toks: int = MAX_GEN_TOKS,
          other_answers: int | None = OTHER_ANSWERS) -> Tasks:
    """Write ``fvsteer_<relation>_test.jsonl`` and the three YAMLs into ``out_dir``."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = held_out_pairs(relation, seed)
    template = PromptTemplate()
    answers = list(dict.fromkeys(pair.output for pair in pairs))  # distinct answers, in split order
    rng = random.Random(seed)
    task_relation = relation.replace("-", "_")
    data_file = out_dir / f"fvsteer_{task_relation}_test.jsonl"
    with data_file.open("w", encoding="utf-8") as out:
        for pair in pairs:
            choices = choices_of(pair, answers, other_answers, rng)
            row = {
                "input": pair.input,
                "output": pair.output,
                "prompt": prefix + template.query(pair.input),
                "chat_prompt": template.query(pair.input),
                "answer_word": first_word(pair.output),
                "choices": choices,
                "label": choices.index(pair.output),
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    names = {}
    for kind in KINDS:
        text = Template((HERE / f"{kind}.yaml.tmpl").read_text(encoding="utf-8")).substitute(
            relation=relation, task_relation=task_relation, data_file=data_file.as_posix(),
            max_gen_toks=max_gen_toks, other_answers="all" if other_answers is None else other_answers,
        )
        names[kind] = f"fvsteer_{task_relation}_{kind}"
        (out_dir / f"{names[kind]}.yaml").write_text(text, encoding="utf-8")
    return Tasks(names, data_file, pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("relation", help="a shipped relation (app/fv/relations/<relation>.json)")
    parser.add_argument("out_dir", type=Path, help="where the JSONL and the YAMLs go (lm-eval's --include_path)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="an fvsteer server: the BOS text is read from its tokenizer")
    source.add_argument("--prefix", help="the text before 'Q:' (the BOS text evaluate prepends; '' for none)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (the vector's metadata 'seed'; default 0)")
    parser.add_argument("--max-gen-toks", type=int, default=MAX_GEN_TOKS)
    parser.add_argument("--other-answers", default=str(OTHER_ANSWERS),
                        help="multiple choice: other answers of the split besides the answer and the query word "
                             f"(a number, or 'all'; default {OTHER_ANSWERS})")
    args = parser.parse_args(argv)
    prefix = args.prefix if args.prefix is not None else bos_prefix_from_server(args.url)
    others = None if args.other_answers == "all" else int(args.other_answers)
    tasks = build(args.relation, args.out_dir, prefix, seed=args.seed, max_gen_toks=args.max_gen_toks,
                  other_answers=others)
    print(f"{len(tasks.pairs)} test pairs → {tasks.data_file}")
    for kind, name in tasks.names.items():
        print(f"  {kind:5} {name}")


if __name__ == "__main__":
    main()
