"""Schema fuzzing with schemathesis: cases generated from the server's own OpenAPI document — valid (positive) and
invalid (negative) — sent over real HTTP to every route of a real server (tiny model, admin token set), each
response checked: never a 5xx, a status documented for the route, the documented content type and headers, a body
valid against the documented schema, and invalid input refused with a 4xx.

schemathesis runs as its CLI (its pytest plugin does not support this pytest); the JSON report is read back."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.conftest import ROOT, LiveServer, start_server, stop_server
from tests.tiny_models import ARCH_CONFIGS, CHAT_TEMPLATE

LLAMA: dict[str, Any] = ARCH_CONFIGS["llama"]
MAX_EXAMPLES = 50  # per route and phase
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,negative_data_rejection")


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[LiveServer]:
    """A server of its own: the fuzzer uploads and deletes vectors and starts jobs. Its tokenizer gets a chat
    template, so that chat completions are fuzzed past the template check."""
    tmp = tmp_path_factory.mktemp("fuzz")
    model_dir = tmp / tiny_llama_dir.name  # the same name: the served model id stays "tiny-llama"
    shutil.copytree(tiny_llama_dir, model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(model_dir)
    server = start_server(
        tmp, str(model_dir), admin_token=secrets.token_hex(16), d_model=int(LLAMA["hidden_size"]),
        n_layers=int(LLAMA["num_hidden_layers"]),
        extra_env={"FVSTEER_MAX_NEW_TOKENS": "16", "FVSTEER_MAX_PROMPT_TOKENS": "64",
                   "FVSTEER_JOBS_DIR": str(tmp / "jobs")},
    )
    yield server
    stop_server(server)


def test_every_route_conforms_to_its_schema(fuzzed_server: LiveServer, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(ROOT / "tests" / "schemathesis.toml"),
        "run", f"{fuzzed_server.url}/openapi.json", "--checks", CHECKS, "--mode", "all",
        "--max-examples", str(MAX_EXAMPLES), "--generation-deterministic", "--workers", "1",
        "--header", f"Authorization: Bearer {fuzzed_server.admin_token}", "--request-timeout", "60",
        "--no-color", "--report", "json", "--report-json-path", str(report_path),
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    report = json.loads(report_path.read_text())
    summary = {"generated": report["test_cases"]["generated"], "operations": report["operations"],
               "failures": [(f["code"], f["title"], f["operations"]) for f in report["failures"]],
               "errors": report["errors"]}
    print(json.dumps(summary))
    assert run.returncode == 0 and report["exit_code"] == 0, run.stdout[-6000:]
    assert not report["failures"] and not report["errors"], summary
    assert report["operations"]["tested"] == report["operations"]["total"] >= 28
    assert report["test_cases"]["generated"] >= 17 * 20
