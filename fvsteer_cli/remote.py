"""Commands that talk to a running server through the SDK: the connection every one of them opens, and the
single-request commands ``complete`` and ``analogy``. ``vectors.py`` and ``jobs.py`` hold the other remote commands.

Nothing here imports the server: the SDK speaks the HTTP API, so the CLI starts fast and uses its names.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TypeVar

from fvsteer_client import Client, Completion, CompletionOptions
from pydantic import BaseModel

from fvsteer_cli.output import EXIT_OK, dump_json, err, out, table
from fvsteer_cli.parsing import Subcommands, relation_weight


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
    complete.add_argument(
        "--relation", action="append", type=relation_weight, dest="relations", metavar="NAME=WEIGHT",
        help="steer with this vector (repeat to compose; weight defaults to 1, may be negative)",
    )
    complete.add_argument("--layer", type=int, help="add every vector at this layer instead of its own")
    complete.add_argument("--scale", type=float, help="multiplies the whole composite vector")
    complete.add_argument("--positions", choices=["fv", "all"], help="fv: last prompt token on; all: every token")
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
