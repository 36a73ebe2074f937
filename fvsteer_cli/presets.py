"""``presets list | put | delete``: the steering presets ("steered models") of a running server, through the SDK.

Every preset route is an admin route, so every command here needs the token (``--token``, env
``FVSTEER_ADMIN_TOKEN``), as ``vectors import`` and ``vectors delete`` do.
"""

from __future__ import annotations

import argparse

from fvsteer_client import Preset

from fvsteer_cli.output import EXIT_OK, dump_json, err, fields, out, table
from fvsteer_cli.parsing import Subcommands, add_steering_flags
from fvsteer_cli.remote import connect, request


def _relations_text(preset: Preset) -> str:
    return ",".join(f"{name}={weight:g}" for name, weight in preset.relations.items())


def _cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        presets = client.admin.list_presets()
    if args.json:
        dump_json(presets)
        return EXIT_OK
    rows = [[p.name, p.status, _relations_text(p), f"{p.scale:g}", "own" if p.layer is None else str(p.layer),
             p.positions, p.description or ""] for p in presets]
    out(table(["NAME", "STATUS", "RELATIONS", "SCALE", "LAYER", "POSITIONS", "DESCRIPTION"], rows))
    for preset in presets:
        if preset.missing:
            err(f"broken: {preset.name}: missing {', '.join(preset.missing)}")
    return EXIT_OK


def _saved(preset: Preset) -> str:
    """A new preset has ``created == updated``; a replacement keeps its first ``created``."""
    verb = "created" if preset.created == preset.updated else "replaced"
    return fields([
        (verb, preset.name), ("relations", _relations_text(preset)), ("scale", f"{preset.scale:g}"),
        ("layer", "own" if preset.layer is None else preset.layer), ("positions", preset.positions),
        ("description", preset.description), ("status", preset.status),
    ])


def _cmd_put(args: argparse.Namespace) -> int:
    return request(
        args,
        lambda client: client.admin.put_preset(
            args.name, dict(args.relations), scale=1.0 if args.scale is None else args.scale, layer=args.layer,
            positions=args.positions or "fv", description=args.description,
        ),
        _saved,
    )


def _cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        deleted = client.admin.delete_preset(args.name)
    out(f"deleted {deleted.deleted}")
    return EXIT_OK


def add_presets_parser(commands: Subcommands) -> None:
    """``presets COMMAND``: save steering under a name that clients can ask for as a model (admin)."""
    presets = commands.add_parser("presets", help="list, save and delete steering presets (admin)")
    sub = presets.add_subparsers(dest="presets_command", metavar="COMMAND", required=True)

    ls = sub.add_parser("list", help="every preset, and whether it can be served now")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(handler=_cmd_list)

    put = sub.add_parser("put", help="save a preset (replaces one of that name entirely)")
    put.add_argument("name", help="the preset's name: the model id clients ask for")
    add_steering_flags(put, relations_required=True)
    put.add_argument("--description", help="free text for people choosing a preset")
    put.add_argument("--json", action="store_true", help="print the saved preset as JSON")
    put.set_defaults(handler=_cmd_put)

    delete = sub.add_parser("delete", help="remove a preset (its vectors stay)")
    delete.add_argument("name")
    delete.set_defaults(handler=_cmd_delete)
