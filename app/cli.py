"""The ``fvsteer`` command line: start the server, or talk to a running one through the SDK.

Only ``serve`` imports the server (and with it torch); every other command is a thin layer over
``fvsteer_client`` so that it starts fast and uses exactly the names of the HTTP API.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fvsteer_client import (
    DEFAULT_BASE_URL,
    APIConnectionError,
    APIError,
    Client,
    Completion,
    CompletionOptions,
    RateLimitError,
)
from pydantic import BaseModel

Handler = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def _dump_json(value: BaseModel | Sequence[BaseModel]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    else:
        data = [v.model_dump(mode="json") for v in value]
    _out(json.dumps(data, indent=2, ensure_ascii=False))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain space-aligned columns: readable by people and splittable by ``awk``."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _fmt_norm(norm: float) -> str:
    return f"{norm:.4g}"


def _client(args: argparse.Namespace) -> Client:
    return Client(base_url=args.url, admin_token=args.token, timeout=args.timeout)


def _relation(text: str) -> tuple[str, float]:
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


def _cmd_serve(args: argparse.Namespace) -> int:
    """Options become ``FVSTEER_*`` variables so that Settings stays the one place configuration is read."""
    for option, var in (("host", "FVSTEER_HOST"), ("port", "FVSTEER_PORT"), ("model", "FVSTEER_MODEL")):
        value = getattr(args, option)
        if value is not None:
            os.environ[var] = str(value)
    from app.server import run  # lazy: torch and the engine load only when serving
    from app.settings import Settings

    run(Settings())
    return EXIT_OK


def _cmd_vectors_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.admin:
            return _print_admin_listing(client, as_json=args.json)
        vectors = client.list_vectors()
    if args.json:
        _dump_json(vectors)
        return EXIT_OK
    rows = [[v.name, v.relation or "", str(v.layer), _fmt_norm(v.norm), v.method, v.model] for v in vectors]
    _out(_table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "MODEL"], rows))
    return EXIT_OK


def _print_admin_listing(client: Client, *, as_json: bool) -> int:
    listing = client.admin.list_vectors()
    if as_json:
        _dump_json(listing)
        return EXIT_OK
    rows = [
        [v.name, v.relation or "", str(v.layer), _fmt_norm(v.norm), v.method, str(v.d_model), str(len(v.heads)),
         str(v.n_pairs if v.n_pairs is not None else ""), v.created]
        for v in listing.vectors
    ]
    _out(_table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "D_MODEL", "HEADS", "PAIRS", "CREATED"], rows))
    for refused in listing.refused:
        _err(f"refused: {refused.file}: {refused.reason}")
    return EXIT_OK


def _cmd_vectors_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        info = client.get_vector(args.name)
    if args.json:
        _dump_json(info)
        return EXIT_OK
    fields = info.model_dump(mode="json")
    width = max(len(key) for key in fields)
    _out("\n".join(f"{key.ljust(width)}  {'' if value is None else value}" for key, value in fields.items()))
    return EXIT_OK


def _cmd_vectors_import(args: argparse.Namespace) -> int:
    with _client(args) as client:
        meta = client.admin.upload_vector(args.file, name=args.name, layer=args.layer, relation=args.relation)
    if args.json:
        _dump_json(meta)
    else:
        _out(f"imported {meta.name}: layer {meta.layer}, norm {_fmt_norm(meta.norm)}, d_model {meta.d_model}")
    return EXIT_OK


def _cmd_vectors_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        deleted = client.admin.delete_vector(args.name)
    _out(f"deleted {deleted.deleted}")
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


def _print_completion(completion: Completion) -> None:
    if completion.baseline is None:
        _out(completion.text)
        return
    label = "steered" if completion.steering is not None else "unsteered"
    _out(f"--- {label} ({completion.finish_reason}) ---")
    _out(completion.text)
    _out(f"--- baseline ({completion.baseline.finish_reason}) ---")
    _out(completion.baseline.text)


def _cmd_complete(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with _client(args) as client:
        completion = client.complete(prompt, **_completion_options(args))
    if args.json:
        _dump_json(completion)
    else:
        _print_completion(completion)
    return EXIT_OK


def _add_vectors_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vectors = commands.add_parser("vectors", help="list, show, import and delete function vectors")
    sub = vectors.add_subparsers(dest="vectors_command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", help="vectors of the loaded model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--admin", action="store_true", help="full metadata and refused files (needs the admin token)")
    ls.set_defaults(handler=_cmd_vectors_list)

    show = sub.add_parser("show", help="one vector's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_vectors_show)

    imp = sub.add_parser("import", help="upload a safetensors vector (admin)")
    imp.add_argument("file", help="safetensors file holding a float tensor 'vector' of shape [d_model]")
    imp.add_argument("--name", required=True)
    imp.add_argument("--layer", required=True, type=int, help="decoder block whose output it is added to")
    imp.add_argument("--relation", help="relation it encodes (defaults to what the server chooses)")
    imp.add_argument("--json", action="store_true", help="print the stored metadata as JSON")
    imp.set_defaults(handler=_cmd_vectors_import)

    delete = sub.add_parser("delete", help="remove a vector from the registry (admin)")
    delete.add_argument("name")
    delete.set_defaults(handler=_cmd_vectors_delete)


def _add_complete_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    complete = commands.add_parser("complete", help="a (steered) completion")
    complete.add_argument("prompt", help="the prompt; '-' reads it from stdin")
    complete.add_argument(
        "--relation", action="append", type=_relation, dest="relations", metavar="NAME=WEIGHT",
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
    complete.add_argument("--json", action="store_true", help="print the whole response as JSON")
    complete.set_defaults(handler=_cmd_complete)


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

    serve = commands.add_parser("serve", help="start the HTTP server")
    serve.add_argument("--host", help="bind address (env FVSTEER_HOST)")
    serve.add_argument("--port", type=int, help="bind port (env FVSTEER_PORT)")
    serve.add_argument("--model", help="HF id, local directory or .gguf file (env FVSTEER_MODEL)")
    serve.set_defaults(handler=_cmd_serve)

    _add_vectors_parser(commands)
    _add_complete_parser(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
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
    """Entry point of the console script; returns the exit status (0 ok, 1 failed, 2 usage error)."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except APIError as exc:
        _err(_describe(exc))
    except APIConnectionError as exc:
        _err(f"error: connection_error: {exc}")
    except OSError as exc:
        _err(f"error: io_error: {exc}")
    except KeyboardInterrupt:
        return 130
    return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
