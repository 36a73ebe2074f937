"""The ``fvsteer`` CLI against a real server, through ``main([...])`` (``serve`` itself is covered by conftest)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path

import fvsteer_client as fv
import pytest
import torch
from safetensors.torch import save_file

from fvsteer_cli import main
from tests.conftest import LiveServer, free_port

PROMPT = "Q: hot\nA:"


def unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # drop anything printed before this command
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def admin_args(server: LiveServer) -> list[str]:
    return ["--url", server.url, "--token", server.admin_token]


def make_vector(tmp_path: Path, d_model: int, name: str, seed: int = 0) -> tuple[Path, torch.Tensor]:
    vector = torch.randn(d_model, generator=torch.Generator().manual_seed(seed)) * 4
    path = tmp_path / f"{name}.safetensors"
    save_file({"vector": vector}, str(path))
    return path, vector


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads FVSTEER_URL / FVSTEER_ADMIN_TOKEN; tests say explicitly what they use."""
    monkeypatch.delenv("FVSTEER_URL", raising=False)
    monkeypatch.delenv("FVSTEER_ADMIN_TOKEN", raising=False)


@pytest.fixture
def imported(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    name = unique()
    path, _ = make_vector(tmp_path, live_server.d_model, name, seed=11)
    code, out, err = run(capsys, *admin_args(live_server), "vectors", "import", str(path), "--name", name,
                         "--layer", "1", "--relation", "antonym")
    assert code == 0, err
    assert out.startswith(f"imported {name}: layer 1")
    return name


def test_vectors_list_show_delete(live_server: LiveServer, imported: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--url", live_server.url, "vectors", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "RELATION", "LAYER", "NORM", "METHOD", "MODEL"]
    row = next(line.split() for line in lines[1:] if line.startswith(imported + " "))
    assert row[1:3] == ["antonym", "1"]

    code, out, _ = run(capsys, "--url", live_server.url, "vectors", "list", "--json")
    assert code == 0
    assert imported in {v["name"] for v in json.loads(out)}

    code, out, _ = run(capsys, *admin_args(live_server), "vectors", "list", "--admin")
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["NAME", "RELATION", "LAYER"]
    assert any(line.startswith(imported + " ") for line in out.splitlines())

    code, out, _ = run(capsys, "--url", live_server.url, "vectors", "show", imported)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["name"] == imported
    assert fields["d_model"] == str(live_server.d_model)

    code, out, _ = run(capsys, "--url", live_server.url, "vectors", "show", imported, "--json")
    assert code == 0
    assert json.loads(out)["layer"] == 1

    code, out, _ = run(capsys, *admin_args(live_server), "vectors", "delete", imported)
    assert (code, out) == (0, f"deleted {imported}\n")

    code, out, err = run(capsys, "--url", live_server.url, "vectors", "show", imported)
    assert code == 1
    assert out == ""
    assert err.startswith("error: not_found: ")


def test_complete_plain_matches_sdk(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    with fv.Client(live_server.url) as client:
        expected = client.complete(PROMPT, max_new_tokens=6).text
    code, out, err = run(capsys, "--url", live_server.url, "complete", PROMPT, "--max-new-tokens", "6")
    assert code == 0, err
    assert out == (expected if expected.endswith("\n") else expected + "\n")


def test_complete_prompt_from_stdin(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(capsys, "--url", live_server.url, "complete", PROMPT, "--max-new-tokens", "4", "--json")
    assert code == 0
    from_arg = json.loads(out)["text"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    code, out, _ = run(capsys, "--url", live_server.url, "complete", "-", "--max-new-tokens", "4", "--json")
    assert code == 0
    assert json.loads(out)["text"] == from_arg


def test_complete_steered_json(live_server: LiveServer, imported: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "--url", live_server.url, "complete", PROMPT, "--relation", f"{imported}=-0.5", "--layer", "2",
        "--scale", "2", "--positions", "all", "--max-new-tokens", "5", "--temperature", "0.8", "--top-p", "0.9",
        "--seed", "3", "--stop", "\n\n", "--baseline", "--json",
    )
    assert code == 0, err
    body = json.loads(out)
    assert body["steering"]["relations"] == {imported: -0.5}
    assert set(body["steering"]["layers"]) == {"2"}
    assert body["baseline"] is not None
    assert body["usage"]["completion_tokens"] <= 5


def test_complete_baseline_text(live_server: LiveServer, imported: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--url", live_server.url, "complete", PROMPT, "--relation", imported,
                       "--max-new-tokens", "4", "--baseline")
    assert code == 0
    assert out.startswith("--- steered (")
    assert "\n--- baseline (" in out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        [],
        ["complete", PROMPT, "--relation", "antonym=lots"],
        ["complete", PROMPT, "--relation", "a=1", "--relation", "a=2"],
        ["complete", PROMPT, "--positions", "middle"],
        ["vectors", "import", "file.safetensors", "--layer", "1"],
        ["vectors", "frobnicate"],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2, argv
        assert "usage:" in err, argv
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "vectors" in out


def test_api_errors_exit_1(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique()
    path, _ = make_vector(tmp_path, live_server.d_model, name)

    code, _, err = run(capsys, "--url", live_server.url, "vectors", "delete", name)
    assert (code, err.split(":")[:2]) == (1, ["error", " unauthorized"])

    code, _, err = run(capsys, *admin_args(live_server), "vectors", "import", str(path), "--name", name, "--layer", "0")
    assert code == 0, err
    code, _, err = run(capsys, *admin_args(live_server), "vectors", "import", str(path), "--name", name, "--layer", "0")
    assert code == 1
    assert err.startswith("error: conflict: ")
    assert run(capsys, *admin_args(live_server), "vectors", "delete", name)[0] == 0

    code, _, err = run(capsys, "--url", live_server.url, "complete", PROMPT, "--max-new-tokens", "0")
    assert code == 1
    assert err.startswith("error: invalid_request: ")

    code, _, err = run(capsys, *admin_args(live_server), "vectors", "import", str(tmp_path / "absent.safetensors"),
                       "--name", unique(), "--layer", "0")
    assert code == 1
    assert err.startswith("error: io_error: ")


def test_connection_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "5", "vectors", "list")
    assert code == 1
    assert err.startswith("error: connection_error: ")


def test_url_and_token_from_env(
    live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FVSTEER_URL", live_server.url)
    monkeypatch.setenv("FVSTEER_ADMIN_TOKEN", live_server.admin_token)
    name = unique()
    path, _ = make_vector(tmp_path, live_server.d_model, name)
    code, out, err = run(capsys, "vectors", "import", str(path), "--name", name, "--layer", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == name
    assert run(capsys, "vectors", "delete", name)[:2] == (0, f"deleted {name}\n")


def test_cli_import_does_not_load_torch() -> None:
    """Every command but ``serve`` must start fast: importing the CLI may not pull in torch or the server."""
    code = (
        "import sys, fvsteer_cli; "
        "bad = [m for m in ('torch', 'app', 'app.engine', 'app.server') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_eval_plot_without_matplotlib_names_the_extra(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """matplotlib is the `plots` extra, not a dependency of the server: --plot without it is a usage error that says
    what to install, before any request (no server runs here)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    code, _, err = run(capsys, "--url", f"http://127.0.0.1:{free_port()}", "eval", "--vector", "v", "--pairs",
                       "antonym", "--plot", str(tmp_path))
    assert code == 2 and "pip install 'fvsteer[plots]'" in err
