"""Commands that run the server's code in this process: ``serve``, and the offline ``analogies`` and ``alignment``
that load the model and the registry themselves.

The one module of the CLI that imports ``app``, and only inside the commands, so that every other command starts
without torch. The server's own errors (``app.errors.FvsteerError``) are reported here, as the SDK's are in
``main.py``, so that ``main.py`` need not import the server to name them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

from fvsteer_cli.output import EXIT_ERROR, EXIT_OK, err, out, table
from fvsteer_cli.parsing import Handler, Subcommands

_CONDITIONS = ("baseline", "softmax", "composite", "oracle")


def _reporting_server_errors(handler: Handler) -> Handler:
    """``error: <type>: <message>`` and exit 1 for the errors the server's code raises, as for the SDK's."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from app.errors import FvsteerError  # lazy: the package of the server

        try:
            return handler(args)
        except FvsteerError as exc:
            err(f"error: {exc.type}: {exc.message}")
            return EXIT_ERROR

    return run


@_reporting_server_errors
def _cmd_serve(args: argparse.Namespace) -> int:
    """Options become ``FVSTEER_*`` variables so that Settings stays the one place configuration is read."""
    for option, var in (("host", "FVSTEER_HOST"), ("port", "FVSTEER_PORT"), ("model", "FVSTEER_MODEL"),
                        ("backend", "FVSTEER_BACKEND")):
        value = getattr(args, option)
        if value is not None:
            os.environ[var] = str(value)
    from app.server import run  # lazy: torch and the engine load only when serving
    from app.settings import Settings

    return run(Settings())


def _accuracy_cell(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"


@_reporting_server_errors
def _cmd_analogies(args: argparse.Namespace) -> int:
    from app.bundle import load_bundle
    from fvsteer_lab.offline import analogy_accuracy  # lazy: loads torch and the model

    result = analogy_accuracy(load_bundle(), Path(args.dataset), limit=args.limit, seed=args.seed, say=err)
    if args.json:
        out(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [[relation, str(counts["n"]), *(_accuracy_cell(counts.get(c)) for c in _CONDITIONS),
             _accuracy_cell(counts.get("oracle_first"))] for relation, counts in result["by_relation"].items()]
    rows.append(["overall", str(result["n"]), *(_accuracy_cell(result.get(c)) for c in _CONDITIONS),
                 _accuracy_cell(result.get("weights_pick_oracle"))])
    out(table(["RELATION", "N", "UNSTEERED", "SOFTMAX", "COMPOSITE", "ORACLE", "ORACLE FIRST"], rows))
    return EXIT_OK


@_reporting_server_errors
def _cmd_alignment(args: argparse.Namespace) -> int:
    from app.bundle import load_bundle
    from fvsteer_lab.offline import alignment  # lazy: loads torch and the model

    result = alignment(load_bundle(), Path(args.semeval), say=err)
    if args.json:
        out(json.dumps(result, indent=2))
        return EXIT_OK
    rows = [[row["subcategory"], row["relation"], str(row["n"]), f"{row['finetuned']:+.3f}",
             f"{row['mediation']:+.3f}", f"{row['unsteered']:+.3f}"] for row in result["subcategories"]]
    mean = result["mean"]
    rows.append(["mean", "", "", f"{mean['finetuned']:+.3f}", f"{mean['mediation']:+.3f}", f"{mean['unsteered']:+.3f}"])
    out(table(["SUBCATEGORY", "RELATION", "N", "FINE-TUNED", "MEDIATION", "UNSTEERED"], rows))
    return EXIT_OK


def add_serve_parser(commands: Subcommands) -> None:
    """``serve``: its flags override the ``FVSTEER_*`` environment."""
    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="bind address (env FVSTEER_HOST)")
    serve.add_argument("--port", type=int, help="bind port (env FVSTEER_PORT)")
    serve.add_argument("--model", help="HF id, local directory or .gguf file (env FVSTEER_MODEL)")
    serve.add_argument("--backend", choices=["hf", "vllm"], help="who serves completions (env FVSTEER_BACKEND)")
    serve.set_defaults(handler=_cmd_serve)


def add_offline_parsers(commands: Subcommands) -> None:
    """``analogies`` and ``alignment``: whole-dataset scores, computed here rather than over HTTP."""
    analogies = commands.add_parser(
        "analogies", help="analogy accuracy on a dataset: unsteered, composite, oracle (runs the model locally)",
        description="Loads the model and the registry (FVSTEER_* settings) in this process and scores every "
                    "problem: unsteered 'A : B :: C : D', the softmax and fitted composites at 'Q: C\nA:', and the "
                    "known relation's own vector (oracle).",
    )
    analogies.add_argument("--dataset", required=True, metavar="FILE",
                           help="UCLA VAT CSV (relation,A,B,C,D,D_foil) or multiple-choice JSONL")
    analogies.add_argument("--limit", type=int, help="score a seeded sample of this many problems")
    analogies.add_argument("--seed", type=int, default=0, help="seeds --limit's sample")
    analogies.add_argument("--json", action="store_true", help="print JSON (keys baseline, composite, n, ...)")
    analogies.set_defaults(handler=_cmd_analogies)

    align = commands.add_parser(
        "alignment", help="Spearman of vector scores with SemEval-2012 human ratings (runs the model locally)",
    )
    align.add_argument("--semeval", required=True, metavar="DIR", help="the semeval2012_task2 folder")
    align.add_argument("--json", action="store_true", help="print JSON")
    align.set_defaults(handler=_cmd_alignment)
