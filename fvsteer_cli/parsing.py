"""Parser pieces more than one command shares, and the bridge from parsed arguments to the SDK's options.

``complete``, ``score`` and ``presets put`` take the same steering flags; ``extract`` and ``finetune`` take the same
pairs source and the same waiting flags; their options reach the SDK
under the names of its TypedDicts, so that an option is spelled once (as a flag) and not again in a dict.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeAlias

Handler: TypeAlias = Callable[[argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def relation_weight(text: str) -> tuple[str, float]:
    """``name=weight`` (weight may be negative); a bare ``name`` means weight 1."""
    name, sep, weight = text.partition("=")
    name = name.strip()
    if not name:
        raise argparse.ArgumentTypeError(f"expected name=weight, got {text!r}")
    if not sep:
        return name, 1.0
    try:
        return name, float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"weight of {name!r} is not a number: {weight!r}") from None


def layer_choice(text: str) -> int | Literal["auto"]:
    """``--layer`` of an extraction: ``auto`` (the server sweeps the layers) or a block number."""
    if text == "auto":
        return "auto"
    try:
        layer = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a layer number, got {text!r}") from None
    if layer < 0:
        raise argparse.ArgumentTypeError(f"layer must be 0 or more, got {layer}")
    return layer


def add_steering_flags(parser: argparse.ArgumentParser, *, relations_required: bool = False) -> None:
    """``--relation NAME=WEIGHT`` (repeatable), ``--layer``, ``--scale`` and ``--positions``: the steering of a
    completion, a score or a preset. Unset flags stay None, so the server's (or the SDK's) defaults apply."""
    parser.add_argument(
        "--relation", action="append", type=relation_weight, dest="relations", metavar="NAME=WEIGHT",
        required=relations_required,
        help="steer with this vector (repeat to compose; weight defaults to 1, may be negative)",
    )
    parser.add_argument("--layer", type=int, help="add every vector at this layer instead of its own")
    parser.add_argument("--scale", type=float, help="multiplies the whole composite vector")
    parser.add_argument("--positions", choices=["fv", "all"], help="fv: last prompt token on; all: every token")


def add_pairs_source(parser: argparse.ArgumentParser) -> None:
    """``--relation NAME | --pairs FILE``, exactly one: what a job learns from."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--relation", help="a shipped relation, e.g. antonym")
    source.add_argument("--pairs", metavar="FILE", help="your pairs: JSON list of {input, output} or 2-column CSV")


def add_wait_flags(parser: argparse.ArgumentParser) -> None:
    """``--no-wait`` and ``--json`` of a command that submits a job and, by default, follows it."""
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    parser.add_argument("--json", action="store_true", help="print the final job (or, with --no-wait, the new one)")


def sdk_options(args: argparse.Namespace, keys: Iterable[str]) -> dict[str, Any]:
    """The parsed values of the SDK option ``keys`` (a TypedDict's ``__optional_keys__``); an option this CLI
    has no flag for is None, which the SDK does not send, so the server's default applies."""
    parsed = vars(args)
    return {key: parsed.get(key) for key in keys}
