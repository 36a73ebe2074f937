"""The CLI is a client: it depends on the SDK, and only ``fvsteer_cli/local.py`` runs the server's code (``app``),
importing it inside its commands. Checked on the source (AST), so no import side effect can hide a violation."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import fvsteer_client as fv
import pytest

from fvsteer_cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "fvsteer_cli"
SERVER = ROOT / "app"


def imported(tree: ast.Module) -> Iterator[tuple[str, bool]]:
    """Every absolute module an import statement names, with whether the statement runs at import time (not
    inside a function)."""

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool]]:
        if isinstance(node, ast.Import):
            yield from ((alias.name, not in_function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            yield node.module, not in_function
        nested = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, nested)

    yield from visit(tree, False)


def imports_of(path: Path, package: str) -> list[tuple[str, bool]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [(name, top) for name, top in imported(tree) if name == package or name.startswith(package + ".")]


def test_the_cli_has_modules() -> None:
    names = {path.name for path in CLI.glob("*.py")}
    assert {"__init__.py", "__main__.py", "main.py", "local.py", "remote.py", "plots.py"} <= names


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda path: path.name)
def test_cli_module_imports_the_server_only_lazily_and_only_in_local(path: Path) -> None:
    server_imports = imports_of(path, "app")
    assert not [name for name, top in server_imports if top], f"{path.name} imports app at module level"
    if path.name != "local.py":
        assert not server_imports, f"{path.name} imports {sorted({name for name, _ in server_imports})}"


def test_local_does_import_the_server() -> None:
    """The guard above would pass vacuously if the offline commands stopped being where the rule says."""
    assert imports_of(CLI / "local.py", "app")


def test_the_server_never_imports_the_cli() -> None:
    offenders = {str(path.relative_to(ROOT)) for path in SERVER.rglob("*.py") if imports_of(path, "fvsteer_cli")}
    assert not offenders


@pytest.mark.parametrize(("command", "keys"), [
    ("extract", fv.ExtractOptions.__optional_keys__),
    ("finetune", fv.FinetuneOptions.__optional_keys__),
])
def test_job_commands_have_a_flag_for_every_sdk_option(command: str, keys: frozenset[str]) -> None:
    """The CLI reads these options by the SDK's names; an SDK option without a flag would never be sent."""
    args = build_parser().parse_args([command, "name", "--relation", "antonym"])
    assert keys <= set(vars(args)), sorted(keys - set(vars(args)))
