"""The layering of docs/architecture.md, checked on the source: each package imports only the packages below it,
the generation seam and the completion service import no torch, and client code (CLI, SDK) imports no server code
(the CLI's local commands excepted, inside their functions)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BASE = {"app.errors", "app.settings", "app.staging"}

# package → the app packages it may import (besides itself and BASE).
ALLOWED: dict[str, set[str]] = {
    "app.registry": set(),
    "app.cache": set(),
    "app.jobs": set(),
    "app.model": set(),
    "app.fv": {"app.cache", "app.model"},
    "app.engine": {"app.model", "app.registry"},
    "app.bundle": {"app.cache", "app.model", "app.registry"},
    "app.analogy": {"app.bundle", "app.fv", "app.model", "app.registry"},
    "app.services": {"app.analogy", "app.cache", "app.engine", "app.fv", "app.jobs", "app.model", "app.registry"},
    "app.openai": {"app.engine", "app.model", "app.registry", "app.services"},
    "app.runtime": {"app.bundle", "app.cache", "app.engine", "app.jobs", "app.model", "app.openai", "app.registry",
                    "app.services"},
    "app.api": {"app.engine", "app.fv", "app.jobs", "app.logs", "app.model", "app.openai", "app.registry",
                "app.runtime", "app.services"},
}
TORCH_FREE = ["app/engine/requests.py", "app/engine/backend.py", "app/engine/stats.py", "app/services/completions.py",
              "app/services/results.py", "app/services/inputs.py", "app/services/generation.py"]
# Modules that check a request, and everything they import, load no torch: validation is not science.
LOADS_NO_TORCH = ["app.api.schemas", "app.api.errors", "app.api.auth", "app.api.limits", "app.services.inputs",
                  "app.services.completions", "app.model.runner", "app.registry.control_vector"]


def imports(path: Path, top_level_only: bool = False) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_what_lies_below_it(package: str) -> None:
    folder = ROOT / package.replace(".", "/")
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    wrong = {f"{path.relative_to(ROOT)} imports {module}" for path in files for module in imports(path)
             if module.startswith("app.") and package_of(module) not in ALLOWED[package] | BASE | {package}}
    assert wrong == set()


def test_the_server_never_imports_the_lab() -> None:
    """fvsteer_lab (evaluation sets, fitting, the bank build) sits above the server: it imports app, not the reverse."""
    wrong = [f"{path.relative_to(ROOT)} imports {module}" for path in sorted((ROOT / "app").rglob("*.py"))
             for module in imports(path) if module.split(".")[0] == "fvsteer_lab"]
    assert wrong == []


@pytest.mark.parametrize("path", TORCH_FREE)
def test_the_generation_seam_needs_no_torch(path: str) -> None:
    assert not [module for module in imports(ROOT / path) if module.split(".")[0] in ("torch", "transformers")]


def test_request_validation_loads_no_torch() -> None:
    """Checked in a fresh interpreter, so what a module imports indirectly counts too."""
    script = ("import importlib, sys\n"
              f"for name in {LOADS_NO_TORCH!r}:\n"
              "    importlib.import_module(name)\n"
              "    assert not {'torch', 'transformers'} & set(sys.modules), name\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_client_code_imports_no_server_code() -> None:
    sdk = [f"{path.name}: {module}" for path in (ROOT / "sdk").rglob("*.py") for module in imports(path)
           if module.split(".")[0] in ("app", "fvsteer_cli", "torch")]
    assert sdk == []
    cli = [f"{path.name}: {module}" for path in (ROOT / "fvsteer_cli").glob("*.py")
           for module in imports(path, top_level_only=True) if module.split(".")[0] in ("app", "torch")]
    assert cli == []  # the local commands import the server's code lazily, inside themselves
    outside_local = [path.name for path in (ROOT / "fvsteer_cli").glob("*.py") if path.name != "local.py"
                     and any(module.split(".")[0] == "app" for module in imports(path))]
    assert outside_local == []
