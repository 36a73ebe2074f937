"""``vectors list | show | import | export | delete | decode`` and ``eval``: the registry of a running server,
through the SDK.

``eval --plot`` draws with matplotlib, imported only then (``plots.py``), so that listing vectors stays fast; it is
the ``plots`` extra (``pip install 'fvsteer[plots]'``), not in the server image.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any, Literal

from fvsteer_client import Client, DecodedVector, EvaluateOptions, Evaluation, VectorInfo

from fvsteer_cli.output import (
    EXIT_OK,
    EXIT_USAGE,
    dump_json,
    err,
    fields,
    fmt_norm,
    format_heads,
    format_metric,
    out,
    table,
)
from fvsteer_cli.parsing import Subcommands
from fvsteer_cli.remote import connect, request

_SETTINGS = ("zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv")
_SETTING_LABELS = {
    "zero_shot": "zero-shot", "zero_shot_fv": "zero-shot + vector", "icl": "in-context",
    "icl_shuffled": "shuffled in-context", "icl_shuffled_fv": "shuffled in-context + vector",
}


def _cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.admin:
            return _print_admin_listing(client, as_json=args.json)
        vectors = client.list_vectors()
    if args.json:
        dump_json(vectors)
        return EXIT_OK
    rows = [[v.name, v.relation or "", str(v.layer), fmt_norm(v.norm), v.method, v.model] for v in vectors]
    out(table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "MODEL"], rows))
    return EXIT_OK


def _print_admin_listing(client: Client, *, as_json: bool) -> int:
    listing = client.admin.list_vectors()
    if as_json:
        dump_json(listing)
        return EXIT_OK
    rows = [
        [v.name, v.relation or "", str(v.layer), fmt_norm(v.norm), v.method, str(v.d_model), str(len(v.heads)),
         str(v.n_pairs if v.n_pairs is not None else ""), v.created]
        for v in listing.vectors
    ]
    out(table(["NAME", "RELATION", "LAYER", "NORM", "METHOD", "D_MODEL", "HEADS", "PAIRS", "CREATED"], rows))
    for refused in listing.refused:
        err(f"refused: {refused.file}: {refused.reason}")
    return EXIT_OK


def _vector_fields(info: VectorInfo) -> list[tuple[str, object]]:
    """``vectors show``: one line per field; heads and metrics condensed so a big model stays one screen."""
    data = info.model_dump(mode="json")
    lines: list[tuple[str, object]] = [(key, value) for key, value in data.items() if key not in ("heads", "metrics")]
    lines.append(("heads", format_heads(info.heads) or "none"))
    if not info.metrics:
        lines.append(("metrics", "none"))
    lines.extend((f"metrics.{key}", format_metric(value)) for key, value in info.metrics.items())
    return lines


def _cmd_show(args: argparse.Namespace) -> int:
    return request(args, lambda client: client.get_vector(args.name), lambda info: fields(_vector_fields(info)))


def _cmd_import(args: argparse.Namespace) -> int:
    return request(
        args, lambda client: client.admin.upload_vector(args.file, name=args.name, layer=args.layer,
                                                        relation=args.relation),
        lambda meta: f"imported {meta.name}: layer {meta.layer}, norm {fmt_norm(meta.norm)}, d_model {meta.d_model}",
    )


def _cmd_export(args: argparse.Namespace) -> int:
    fmt: Literal["gguf", "safetensors"] = args.format or (
        "safetensors" if args.output.endswith(".safetensors") else "gguf")
    with connect(args) as client:
        data = client.export_vector(args.name, fmt)
    Path(args.output).write_bytes(data)
    err(f"wrote {args.name} as {fmt} to {args.output} ({len(data)} bytes)")
    return EXIT_OK


def _cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        deleted = client.admin.delete_vector(args.name)
    out(f"deleted {deleted.deleted}")
    return EXIT_OK


def _decoded_table(decoded: DecodedVector) -> str:
    """Tokens as JSON strings, so that leading spaces and newlines stay visible."""
    rows = [[str(rank), json.dumps(t.token, ensure_ascii=False), f"{t.prob:.4f}"]
            for rank, t in enumerate(decoded.tokens, start=1)]
    return table(["RANK", "TOKEN", "PROB"], rows)


def _cmd_decode(args: argparse.Namespace) -> int:
    return request(args, lambda client: client.decode_vector(args.name, k=args.k), _decoded_table)


def _pairs_or_relation(value: str) -> EvaluateOptions:
    """An existing file is a pairs file; anything else names a shipped relation (the server knows which exist)."""
    return {"pairs": value} if Path(value).is_file() else {"relation": value}


def _evaluation_json(result: Evaluation) -> dict[str, Any]:
    """One flat object: each setting's top-1 under its name, top-3 apart."""
    accuracies = {name: getattr(result, name) for name in _SETTINGS}
    return {
        **{name: accuracy.top1 for name, accuracy in accuracies.items()},
        "n": result.n,
        "top3": {name: accuracy.top3 for name, accuracy in accuracies.items()},
        "n_dropped": result.n_dropped,
        "vector": result.vector,
        "layer": result.layer,
    }


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        err("--plot needs matplotlib: pip install 'fvsteer[plots]'")
        return EXIT_USAGE
    options: EvaluateOptions = {**_pairs_or_relation(args.pairs), "seed": args.seed, "shots": args.shots}
    with connect(args) as client:
        result = client.evaluate(args.vector, **options)
        info = client.get_vector(args.vector) if args.plot is not None else None
    if args.json:
        out(json.dumps(_evaluation_json(result), indent=2, ensure_ascii=False))
    else:
        out(f"vector {result.vector} (layer {result.layer}) on {result.relation}: "
            f"{result.n} pairs, {result.n_dropped} dropped (wrong even with clean in-context prompts)")
        rows = [[_SETTING_LABELS[name], f"{getattr(result, name).top1:.3f}", f"{getattr(result, name).top3:.3f}"]
                for name in _SETTINGS]
        out(table(["SETTING", "TOP1", "TOP3"], rows))
    if info is not None:
        from fvsteer_cli.plots import plot_vector  # lazy: matplotlib is slow to import

        for path in plot_vector(info, Path(args.plot), err):
            err(f"wrote {path}")
    return EXIT_OK


def add_vectors_parser(commands: Subcommands) -> None:
    """``vectors COMMAND``: the registry's contents, and its admin operations."""
    vectors = commands.add_parser("vectors", help="list, show, import and delete function vectors")
    sub = vectors.add_subparsers(dest="vectors_command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", help="vectors of the loaded model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--admin", action="store_true", help="full metadata and refused files (needs the admin token)")
    ls.set_defaults(handler=_cmd_list)

    show = sub.add_parser("show", help="one vector's details")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cmd_show)

    imp = sub.add_parser("import", help="upload a safetensors vector or a GGUF control vector (admin)")
    imp.add_argument("file", help="safetensors file holding a float tensor 'vector' of shape [d_model], or a GGUF "
                                  "control vector (llama.cpp, repeng) with one direction.<layer>")
    imp.add_argument("--name", required=True)
    imp.add_argument("--layer", type=int, help="decoder block whose output it is added to (required for "
                                               "safetensors; a GGUF control vector names its own)")
    imp.add_argument("--relation", help="relation it encodes (defaults to what the server chooses)")
    imp.add_argument("--json", action="store_true", help="print the stored metadata as JSON")
    imp.set_defaults(handler=_cmd_import)

    export = sub.add_parser("export", help="download a vector as a GGUF control vector or a safetensors file",
                            description="A GGUF control vector loads in llama.cpp (--control-vector) and repeng; "
                                        "llama.cpp adds it at every position (fvsteer's positions 'all').")
    export.add_argument("name")
    export.add_argument("-o", "--output", required=True, help="file to write (.gguf or .safetensors)")
    export.add_argument("--format", choices=("gguf", "safetensors"),
                        help="default: from the output's suffix (.safetensors), else gguf")
    export.set_defaults(handler=_cmd_export)

    delete = sub.add_parser("delete", help="remove a vector from the registry (admin)")
    delete.add_argument("name")
    delete.set_defaults(handler=_cmd_delete)

    decode = sub.add_parser("decode", help="the tokens a vector promotes (logit lens)")
    decode.add_argument("name")
    decode.add_argument("-k", type=int, default=10, help="how many tokens (default %(default)s)")
    decode.add_argument("--json", action="store_true", help="print JSON")
    decode.set_defaults(handler=_cmd_decode)


def add_eval_parser(commands: Subcommands) -> None:
    """``eval --vector NAME --pairs FILE_OR_RELATION``: accuracy without and with the vector."""
    ev = commands.add_parser("eval", help="accuracy of a vector: zero-shot and in-context, without and with it")
    ev.add_argument("--vector", required=True, help="the vector to evaluate")
    ev.add_argument("--pairs", required=True, metavar="FILE_OR_RELATION",
                    help="a pairs file (JSON or CSV) if such a file exists, else a shipped relation name")
    ev.add_argument("--seed", type=int, help="seeds demonstrations and shuffles (server: 0)")
    ev.add_argument("--shots", type=int, help="demonstrations per in-context prompt (server: 10)")
    ev.add_argument("--json", action="store_true", help="print one JSON object (top-1 per setting, top3 apart)")
    ev.add_argument("--plot", metavar="DIR",
                    help="also write DIR/<vector>_aie.png and DIR/<vector>_layer_sweep.png from its extraction")
    ev.set_defaults(handler=_cmd_eval)
