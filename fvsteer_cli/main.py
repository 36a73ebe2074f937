"""The ``fvsteer`` command line: the parser, its global options, dispatch to a command, and how an error becomes
an exit status.

Every command but ``serve``, ``analogies`` and ``alignment`` (``local.py``) is a thin layer over ``fvsteer_client``,
so this module and the ones it imports never load the server, torch, tqdm or matplotlib.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from fvsteer_client import DEFAULT_BASE_URL, APIConnectionError, APIError, InvalidPairsError, RateLimitError

from fvsteer_cli import jobs, local, presets, remote, vectors
from fvsteer_cli.output import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, err
from fvsteer_cli.parsing import Handler


def build_parser() -> argparse.ArgumentParser:
    """Built per call so that ``--url``/``--token`` defaults follow the environment at that moment."""
    parser = argparse.ArgumentParser(prog="fvsteer", description="Steer language models with function vectors.")
    parser.add_argument(
        "--url", default=os.environ.get("FVSTEER_URL") or DEFAULT_BASE_URL,
        help="server base URL (env FVSTEER_URL; default %(default)s)",
    )
    parser.add_argument(
        "--token", default=os.environ.get("FVSTEER_ADMIN_TOKEN") or None,
        help="admin token for admin commands (env FVSTEER_ADMIN_TOKEN)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # the order of --help: serving first, then the registry and presets, completions and scores, jobs, evaluation
    # and analogies
    local.add_serve_parser(commands)
    vectors.add_vectors_parser(commands)
    presets.add_presets_parser(commands)
    remote.add_complete_parser(commands)
    remote.add_score_parser(commands)
    jobs.add_jobs_parsers(commands)
    vectors.add_eval_parser(commands)
    remote.add_analogy_parser(commands)
    local.add_offline_parsers(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, and refuse a relation given twice to ``complete``, ``score`` or ``presets put`` (its weights would
    silently overwrite)."""
    args = parser.parse_args(argv)
    relations: list[tuple[str, float]] = getattr(args, "relations", None) or []
    names = [name for name, _ in relations]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"--relation given more than once for: {', '.join(repeated)}")
    return args


def _describe(exc: APIError) -> str:
    text = f"error: {exc.type}: {exc.message}"
    if isinstance(exc, RateLimitError) and exc.retry_after is not None:
        text += f" (retry after {exc.retry_after:g}s)"
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status (0 ok, 1 failed, 2 usage error, 130 Ctrl-C)."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except APIError as exc:
        err(_describe(exc))
    except APIConnectionError as exc:
        err(f"error: connection_error: {exc}")
    except InvalidPairsError as exc:
        err(f"error: invalid_pairs: {exc}")
    except OSError as exc:
        err(f"error: io_error: {exc}")
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_ERROR
