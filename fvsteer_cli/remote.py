"""Commands that talk to a running server through the SDK: the connection every one of them opens, and the
single-request commands ``complete``, ``score`` and ``analogy``. ``vectors.py``, ``presets.py`` and ``jobs.py`` hold
the other remote commands.

Nothing here imports the server: the SDK speaks the HTTP API, so the CLI starts fast and uses its names.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeVar

from fvsteer_client import Client, Completion, CompletionOptions, Score, Steering
from pydantic import BaseModel

from fvsteer_cli.output import EXIT_OK, dump_json, err, fmt_norm, out, table
from fvsteer_cli.parsing import Subcommands, add_steering_flags


def connect(args: argparse.Namespace) -> Client:
    """A client built from the global ``--url``, ``--token`` and ``--timeout``."""
    return Client(base_url=args.url, admin_token=args.token, timeout=args.timeout)


Answer = TypeVar("Answer", bound=BaseModel)


def request(args: argparse.Namespace, call: Callable[[Client], Answer], render: Callable[[Answer], str]) -> int:
    """The shape of most commands: one call, its answer printed as the SDK's JSON with ``--json``, else as
    ``render`` words it."""
    with connect(args) as client:
        answer = call(client)
    if args.json:
        dump_json(answer)
    else:
        out(render(answer))
    return EXIT_OK


def _completion_options(args: argparse.Namespace) -> CompletionOptions:
    """Unset options stay None, which the SDK does not send, so the server's defaults stay the defaults."""
    return {
        "relations": dict(args.relations) if args.relations else None,
        "layer": args.layer,
        "scale": args.scale,
        "positions": args.positions,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": list(args.stop) if args.stop else None,
        "return_baseline": True if args.baseline else None,
    }


def _print_baseline(completion: Completion) -> None:
    if completion.baseline is not None:
        out(f"--- baseline ({completion.baseline.finish_reason}) ---")
        out(completion.baseline.text)


def _print_completion(completion: Completion) -> None:
    if completion.baseline is None:
        out(completion.text)
        return
    label = "steered" if completion.steering is not None else "unsteered"
    out(f"--- {label} ({completion.finish_reason}) ---")
    out(completion.text)
    _print_baseline(completion)


def _cmd_complete(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if args.stream:
        return _stream_completion(args, prompt)
    with connect(args) as client:
        completion = client.complete(prompt, **_completion_options(args))
    if args.json:
        dump_json(completion)
    else:
        _print_completion(completion)
    return EXIT_OK


def _stream_completion(args: argparse.Namespace, prompt: str) -> int:
    """Print the text as it is generated; the finish reason (and baseline, if asked) follow on stderr/stdout."""
    with connect(args) as client:
        final: Completion | None = None
        for chunk in client.complete(prompt, stream=True, **_completion_options(args)):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            final = chunk.completion or final
    sys.stdout.write("\n")
    if final is not None:
        err(f"[{final.finish_reason}, {final.usage.completion_tokens} tokens]")
        _print_baseline(final)
    return EXIT_OK


def _steering_text(steering: Steering | None) -> str:
    """``steered: a=1, b=-0.5; layer 2 norm 3.21`` (what the server applied), or ``unsteered``."""
    if steering is None:
        return "unsteered"
    relations = ", ".join(f"{name}={weight:g}" for name, weight in steering.relations.items())
    layers = ", ".join(f"layer {layer} norm {fmt_norm(applied.norm)}"
                       for layer, applied in sorted(steering.layers.items()))
    return f"steered: {relations}; {layers}" if layers else f"steered: {relations}"


def _score_table(score: Score) -> str:
    """One line per continuation, most likely first and marked ``*``: total log-prob, the continuation, and each
    token's log-prob (texts as JSON strings, so that leading spaces and newlines stay visible)."""
    rows = []
    for index, scored in score.ranked():
        tokens = " ".join(f"{json.dumps(t.token, ensure_ascii=False)}:{t.logprob:.3f}" for t in scored.tokens)
        rows.append(["*" if index == score.best else "", f"{scored.logprob:.3f}",
                     json.dumps(scored.continuation, ensure_ascii=False), tokens])
    return table(["", "LOGPROB", "CONTINUATION", "TOKENS"], rows)


def _cmd_score(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with connect(args) as client:
        score = client.score(
            prompt, args.continuations, relations=dict(args.relations) if args.relations else None,
            scale=1.0 if args.scale is None else args.scale, layer=args.layer, positions=args.positions or "fv",
        )
    if args.json:
        dump_json(score)
        return EXIT_OK
    out(_score_table(score))
    err(f"{_steering_text(score.steering)}; {score.usage.prompt_tokens} prompt tokens")
    return EXIT_OK


def _cmd_analogy(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.analogy(args.a, args.b, args.c, choices=args.choices, max_new_tokens=args.max_new_tokens)
    if args.json:
        dump_json(result)
        return EXIT_OK
    out(f"{result.a} : {result.b} :: {result.c} : {result.answer}")
    rows = [[name, f"{weight:+.3f}", f"{result.scores[name]:.2f}"] for name, weight in result.top_relations(args.top)]
    out(table(["RELATION", "WEIGHT", "LOG P(B|A)"], rows))
    if result.choice_scores is not None and args.choices:
        out(table(["CHOICE", "LOG P"], [[choice, f"{score:.2f}"]
                                        for choice, score in zip(args.choices, result.choice_scores, strict=True)]))
    err(f"combiner: {result.combiner}")
    return EXIT_OK


def add_complete_parser(commands: Subcommands) -> None:
    """``complete PROMPT``: one (steered) completion, printed, streamed or as JSON."""
    complete = commands.add_parser("complete", help="a (steered) completion")
    complete.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    add_steering_flags(complete)
    complete.add_argument("--max-new-tokens", type=int)
    complete.add_argument("--temperature", type=float, help="0 = greedy")
    complete.add_argument("--top-p", type=float)
    complete.add_argument("--seed", type=int, help="makes sampling reproducible")
    complete.add_argument(
        "--stop", action="append", metavar="S", help="stop sequence (repeatable; in bash, $'\\n' is a newline)"
    )
    complete.add_argument("--baseline", action="store_true", help="also return the unsteered completion")
    output = complete.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the whole response as JSON")
    output.add_argument("--stream", action="store_true", help="print the text as it is generated")
    complete.set_defaults(handler=_cmd_complete)


def add_analogy_parser(commands: Subcommands) -> None:
    """``analogy A B C``: the server solves one analogy with its combiner."""
    analogy = commands.add_parser("analogy", help="solve A : B :: C : ? with the composite A:B implies (server)")
    analogy.add_argument("a")
    analogy.add_argument("b")
    analogy.add_argument("c")
    analogy.add_argument("--choices", nargs="+", metavar="D", help="candidate answers (else the answer is generated)")
    analogy.add_argument("--max-new-tokens", type=int, help="tokens generated without choices (server: 8)")
    analogy.add_argument("--top", type=int, default=5, help="relations shown (largest weights)")
    analogy.add_argument("--json", action="store_true", help="print the whole response as JSON")
    analogy.set_defaults(handler=_cmd_analogy)


def add_score_parser(commands: Subcommands) -> None:
    """``score PROMPT CONTINUATION…``: log p(continuation | prompt) of each, steered or not."""
    score = commands.add_parser("score", help="log-probabilities of candidate continuations (steered or not)")
    score.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    score.add_argument("continuations", nargs="+", metavar="CONTINUATION",
                       help="candidates (1-32), each appended to the prompt as is: quote a leading space (' cold')")
    add_steering_flags(score)
    score.add_argument("--json", action="store_true", help="print the whole response as JSON")
    score.set_defaults(handler=_cmd_score)
