"""``fvsteer extract | jobs | eval | vectors decode`` against a real server (tiny random llama), through ``main``.

Ctrl-C is tested on a real process (``python -m fvsteer_cli``) receiving SIGINT.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fvsteer_client as fv
import pytest
import torch
from safetensors.torch import save

from fvsteer_cli import main
from tests.conftest import LiveServer
from tests.faults import Faults

ROOT = Path(__file__).resolve().parent.parent
RELATIONS = ROOT / "app" / "fv" / "relations"
SMALL = ["--n-prompts", "8", "--n-trials", "3", "--n-heads", "3"]
EVAL_KEYS = {"zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv", "n",
             "top3", "n_dropped", "vector", "layer"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def unique(prefix: str = "cj") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fresh_seed() -> str:
    """A seed no other run used, so the head-mean cache cannot make a big job finish at once."""
    return str(random.randrange(1_000, 2**31 - 1))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def antonym_pairs(n: int = 24) -> list[dict[str, str]]:
    """The first ``n`` shipped antonym pairs, each with its primary answer only (a CSV row holds one answer)."""
    pairs: list[dict[str, Any]] = json.loads((RELATIONS / "antonym.json").read_text())
    return [{"input": p["input"], "output": p["output"] if isinstance(p["output"], str) else p["output"][0]}
            for p in pairs[:n]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FVSTEER_URL", raising=False)
    monkeypatch.delenv("FVSTEER_ADMIN_TOKEN", raising=False)


@pytest.fixture(scope="module")
def sdk(live_server: LiveServer) -> Iterator[fv.Client]:
    with fv.Client(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
        yield c


@pytest.fixture
def cleanup(sdk: fv.Client) -> Iterator[list[str]]:
    """Names appended here are deleted after the test."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(fv.NotFoundError):
            sdk.admin.delete_vector(name)


@pytest.fixture(scope="module")
def vector(sdk: fv.Client) -> Iterator[str]:
    """An extracted vector (via the SDK) for the commands that only read one."""
    name = unique("cfv")
    job = sdk.wait_for_job(sdk.extract(name, relation="antonym", n_prompts=8, n_trials=3, n_heads=3), timeout=60)
    assert job.state == "succeeded", job
    yield name
    with contextlib.suppress(fv.NotFoundError):
        sdk.admin.delete_vector(name)


def test_extract_relation_json(live_server: LiveServer, sdk: fv.Client, cleanup: list[str],
                               capsys: pytest.CaptureFixture[str]) -> None:
    name = unique()
    cleanup.append(name)
    code, out, err = run(capsys, "--url", live_server.url, "extract", name, "--relation", "antonym", *SMALL,
                         "--layer", "auto", "--seed", "2", "--json")
    assert code == 0, err
    job = json.loads(out)  # stdout is exactly the final job
    assert job["state"] == "succeeded"
    assert job["result"]["vector"] == name
    assert f"submitted {job['id']}" in err
    assert "100%" in err  # the progress bar (stderr) reached the end
    assert sdk.get_vector(name).layer == job["result"]["layer"]
    steered = sdk.complete("Q: hot\nA:", relations={name: 1.0}, max_new_tokens=3)
    assert steered.steering is not None


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_extract_pairs_summary(live_server: LiveServer, sdk: fv.Client, cleanup: list[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    pairs = antonym_pairs()
    path = tmp_path / f"pairs{suffix}"
    if suffix == ".csv":
        path.write_text("input,output\n" + "".join(f"{p['input']},{p['output']}\n" for p in pairs))
    else:
        path.write_text(json.dumps(pairs))
    name = unique()
    cleanup.append(name)
    code, out, err = run(capsys, "--url", live_server.url, "extract", name, "--pairs", str(path), *SMALL,
                         "--layer", "2")
    assert code == 0, err
    fields = {key: value.strip() for key, _, value in (line.partition("  ") for line in out.splitlines())}
    assert fields["vector"] == name
    assert fields["layer"] == "2"
    assert fields["heads"].count("L") == 3
    assert "zero-shot" in out and "with the vector" in out
    assert "means" in out and "scoring" in out  # phase times
    assert "head-means cache" in out
    assert "scoring cache" in out and "AIE" in out and "layer sweep" in out
    info = sdk.get_vector(name)
    assert (info.relation, info.layer) == ("custom", 2)


def test_extract_errors(live_server: LiveServer, vector: str, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", live_server.url]
    few = tmp_path / "few.json"
    few.write_text(json.dumps(antonym_pairs(5)))
    code, out, err = run(capsys, *url, "extract", unique(), "--pairs", str(few))
    assert (code, out) == (1, "")
    assert err.startswith("error: invalid_request: ") and "12" in err

    code, _, err = run(capsys, *url, "extract", unique(), "--relation", "no-such-relation")
    assert code == 1 and err.startswith("error: not_found: ")

    code, _, err = run(capsys, *url, "extract", vector, "--relation", "antonym", *SMALL)
    assert code == 1 and err.startswith("error: conflict: ")

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n")
    code, _, err = run(capsys, *url, "extract", unique(), "--pairs", str(bad))
    assert code == 1 and err.startswith("error: invalid_pairs: ")

    code, _, err = run(capsys, *url, "extract", unique(), "--pairs", str(tmp_path / "absent.json"))
    assert code == 1 and err.startswith("error: io_error: ")

    for argv in (
        ["extract", "x"],  # neither --relation nor --pairs
        ["extract", "x", "--relation", "antonym", "--pairs", str(few)],
        ["extract", "x", "--relation", "antonym", "--layer", "middle"],
        ["extract", "x", "--relation", "antonym", "--layer", "-1"],
        ["eval", "--vector", "x"],
        ["jobs", "show"],
        ["jobs", "restart", "job-x"],
    ):
        code, _, err = run(capsys, *url, *argv)
        assert code == 2, argv
        assert "usage:" in err, argv


def test_no_wait_jobs_show_and_cancel_finished(live_server: LiveServer, sdk: fv.Client, cleanup: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", live_server.url]
    name = unique()
    cleanup.append(name)
    code, out, err = run(capsys, *url, "extract", name, "--relation", "synonym", *SMALL, "--no-wait")
    assert code == 0, err
    job_id = out.strip()
    assert job_id.startswith("job-") and "\n" not in job_id
    assert err == ""  # no progress bar without waiting
    assert sdk.wait_for_job(job_id, timeout=60).state == "succeeded"

    code, out, _ = run(capsys, *url, "jobs", "show", job_id, "--json")
    assert code == 0
    assert json.loads(out)["result"]["vector"] == name

    code, out, _ = run(capsys, *url, "jobs", "show", job_id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["id", job_id]
    fields = dict(line.split(None, 1) for line in lines)
    assert (fields["state"], fields["progress"], fields["vector"]) == ("succeeded", "100%", name)

    code, out, _ = run(capsys, *url, "jobs", "cancel", job_id)
    assert (code, out) == (0, f"{job_id} had already succeeded; nothing to cancel\n")

    code, _, err = run(capsys, *url, "jobs", "show", "job-" + "0" * 16)
    assert code == 1 and err.startswith("error: not_found: ")
    code, _, err = run(capsys, *url, "jobs", "cancel", "job-" + "0" * 16)
    assert code == 1 and err.startswith("error: not_found: ")

    code, out, _ = run(capsys, *url, "extract", unique(), "--relation", "antonym", *SMALL, "--no-wait", "--json")
    assert code == 0
    queued = json.loads(out)
    assert queued["state"] in {"queued", "running"}
    final = sdk.wait_for_job(queued["id"], timeout=60)
    cleanup.append(str(final.vector))


def test_jobs_cancel_running(gated_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = ["--url", gated_server.url]
    faults = Faults(gated_server)
    name = unique("held")
    with fv.Client(gated_server.url, admin_token=gated_server.admin_token, timeout=60) as sdk:
        with faults.held("tasks"):  # the job is running and cannot finish
            code, out, _ = run(capsys, *url, "extract", name, "--relation", "antonym", *SMALL, "--seed",
                               fresh_seed(), "--no-wait")
            assert code == 0
            job_id = out.strip()
            faults.wait_parked("tasks")
            code, out, err = run(capsys, *url, "jobs", "cancel", job_id)
        assert code == 0, err
        assert out == f"cancelling {job_id} (it stops at its next step and saves nothing)\n"
        assert sdk.wait_for_job(job_id, timeout=60).state == "cancelled"
        code, out, _ = run(capsys, *url, "jobs", "show", job_id)
        assert "state     cancelled" in out
        code, out, _ = run(capsys, *url, "jobs", "cancel", job_id)
        assert out == f"cancelled {job_id}\n"
        with pytest.raises(fv.NotFoundError):
            sdk.get_vector(name)


def _default_sigint() -> None:
    """In the CLI's process, before exec: SIGINT back to its default. A shell starts background jobs with SIGINT
    ignored, a child inherits that, and Python then never turns SIGINT into KeyboardInterrupt: a test run launched
    in the background would wait for a Ctrl-C that cannot arrive."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_extract_ctrl_c_cancels(gated_server: LiveServer) -> None:
    faults = Faults(gated_server)
    name = unique("intr")
    env = {**os.environ, "FVSTEER_URL": gated_server.url}
    with faults.held("tasks"):  # the job cannot finish before Ctrl-C reaches the CLI
        proc = subprocess.Popen(
            [sys.executable, "-m", "fvsteer_cli", "extract", name, "--relation", "antonym", *SMALL, "--seed",
             fresh_seed()],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=_default_sigint,
        )
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()  # "submitted job-…", printed before the bar starts
            assert first.startswith("submitted job-"), first
            job_id = first.split()[1]
            while proc.stderr.read(1) not in ("%", ""):  # the bar is drawn: the CLI is following the job
                pass
            faults.wait_parked("tasks")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err
    assert out == ""
    assert f"asked {job_id} to stop" in err or f"cancelled {job_id}" in err
    with fv.Client(gated_server.url, timeout=60) as sdk:
        assert sdk.wait_for_job(job_id, timeout=60).state == "cancelled"
        with pytest.raises(fv.NotFoundError):
            sdk.get_vector(name)


def test_eval_json(live_server: LiveServer, vector: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--url", live_server.url, "eval", "--vector", vector, "--pairs", "antonym",
                         "--seed", "1", "--shots", "4", "--json")
    assert code == 0, err
    body = json.loads(out)  # exactly one JSON object on stdout
    assert set(body) == EVAL_KEYS
    for key in ("zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv"):
        assert isinstance(body[key], float) and 0.0 <= body[key] <= body["top3"][key] <= 1.0
    assert set(body["top3"]) == {"zero_shot", "zero_shot_fv", "icl", "icl_shuffled", "icl_shuffled_fv"}
    assert isinstance(body["n"], int) and isinstance(body["n_dropped"], int)
    assert body["vector"] == vector


def test_eval_table_with_pairs_file(live_server: LiveServer, vector: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pairs.csv"
    path.write_text("".join(f"{p['input']},{p['output']}\n" for p in antonym_pairs(15)))
    code, out, err = run(capsys, "--url", live_server.url, "eval", "--vector", vector, "--pairs", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"vector {vector} (layer ") and " on custom: " in lines[0]
    assert lines[1].split() == ["SETTING", "TOP1", "TOP3"]
    assert [line.rsplit(None, 2)[0] for line in lines[2:]] == [
        "zero-shot", "zero-shot + vector", "in-context", "shuffled in-context", "shuffled in-context + vector"]

    code, _, err = run(capsys, "--url", live_server.url, "eval", "--vector", vector, "--pairs", "no-such-relation")
    assert code == 1 and err.startswith("error: not_found: ")


def test_eval_plot(live_server: LiveServer, sdk: fv.Client, vector: str, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    plots = tmp_path / "plots" / "nested"
    code, out, err = run(capsys, "--url", live_server.url, "eval", "--vector", vector, "--pairs", "antonym",
                         "--json", "--plot", str(plots))
    assert code == 0, err
    assert set(json.loads(out)) == EVAL_KEYS  # plots do not disturb the JSON on stdout
    written = sorted(p.name for p in plots.iterdir())
    assert written == [f"{vector}_aie.png", f"{vector}_layer_sweep.png"]
    from matplotlib.image import imread

    for name in written:
        path = plots / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert f"wrote {path}" in err
        image = imread(path)
        assert image.shape[0] > 100 and image.shape[1] > 100

    # an imported vector has no extraction metrics: say so, write nothing, still evaluate
    imported = unique("imp")
    sdk.admin.upload_vector(save({"vector": torch.ones(live_server.d_model)}), name=imported, layer=1)
    try:
        empty = tmp_path / "empty"
        code, out, err = run(capsys, "--url", live_server.url, "eval", "--vector", imported, "--pairs", "antonym",
                             "--plot", str(empty))
        assert code == 0, err
        assert out.startswith(f"vector {imported} ")
        assert "no AIE or layer-sweep metrics" in err
        assert not empty.exists()
    finally:
        sdk.admin.delete_vector(imported)


def test_vectors_decode(live_server: LiveServer, vector: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--url", live_server.url, "vectors", "decode", vector, "-k", "3")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["RANK", "TOKEN", "PROB"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]

    code, out, _ = run(capsys, "--url", live_server.url, "vectors", "decode", vector, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["name"] == vector
    assert len(body["tokens"]) == 10
    assert all(set(t) == {"token", "prob"} for t in body["tokens"])

    code, _, err = run(capsys, "--url", live_server.url, "vectors", "decode", unique("missing"))
    assert code == 1 and err.startswith("error: not_found: ")


def test_cli_import_stays_light() -> None:
    """The new commands import tqdm and matplotlib only when they draw."""
    code = (
        "import sys, fvsteer_cli; "
        "bad = [m for m in ('torch', 'matplotlib', 'tqdm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
