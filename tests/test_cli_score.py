"""``fvsteer score`` and ``fvsteer presets`` against a real server (tiny random llama), through ``main([...])``."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import fvsteer_client as fv
import pytest

from tests.conftest import LiveServer
from tests.test_cli import PROMPT, admin_args, make_vector, run, unique

CONTINUATIONS = [" cold", " warm", "x"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads FVSTEER_URL / FVSTEER_ADMIN_TOKEN; tests say explicitly what they use."""
    monkeypatch.delenv("FVSTEER_URL", raising=False)
    monkeypatch.delenv("FVSTEER_ADMIN_TOKEN", raising=False)


@pytest.fixture
def vector(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    name = unique("score")
    path, _ = make_vector(tmp_path, live_server.d_model, name, seed=31)
    code, _, err = run(capsys, *admin_args(live_server), "vectors", "import", str(path), "--name", name,
                       "--layer", "2")
    assert code == 0, err
    yield name
    run(capsys, *admin_args(live_server), "vectors", "delete", name)


def sdk_score(server: LiveServer, **options: object) -> fv.Score:
    with fv.Client(server.url) as client:
        return client.score(PROMPT, CONTINUATIONS, **options)  # type: ignore[arg-type]


def parse_lines(out: str) -> list[tuple[bool, float, str, list[tuple[str, float]]]]:
    """The human output back into (best?, total, continuation, [(token, logprob)]), one per line after the header."""
    header, *lines = out.splitlines()
    assert header.split() == ["LOGPROB", "CONTINUATION", "TOKENS"]
    decoder = json.JSONDecoder()
    parsed = []
    for line in lines:
        marked, rest = line[:1] == "*", line[1:].lstrip()
        total_text, rest = rest.split(None, 1)
        continuation, end = decoder.raw_decode(rest)
        rest = rest[end:].lstrip()
        tokens = []
        while rest:
            token, end = decoder.raw_decode(rest)
            value, _, rest = rest[end + 1:].partition(" ")
            tokens.append((token, float(value)))
            rest = rest.lstrip()
        parsed.append((marked, float(total_text), continuation, tokens))
    return parsed


def test_score_human_output(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    expected = sdk_score(live_server)
    code, out, err = run(capsys, "--url", live_server.url, "score", PROMPT, *CONTINUATIONS)
    assert code == 0, err
    lines = parse_lines(out)
    assert len(lines) == len(CONTINUATIONS)
    # most likely first, only it marked; each total is its tokens' sum (to the printed precision)
    assert [marked for marked, *_ in lines] == [True] + [False] * (len(CONTINUATIONS) - 1)
    assert lines[0][2] == CONTINUATIONS[expected.best]
    assert [total for _, total, *_ in lines] == sorted((total for _, total, *_ in lines), reverse=True)
    assert [continuation for *_, continuation, _ in lines] == [s.continuation for _, s in expected.ranked()]
    for _, total, continuation, tokens in lines:
        assert "".join(token for token, _ in tokens) == continuation
        assert total == pytest.approx(sum(logprob for _, logprob in tokens), abs=2e-3 * len(tokens))
        scored = next(s for s in expected.scores if s.continuation == continuation)
        assert total == pytest.approx(scored.logprob, abs=1e-3)
    assert err.startswith("unsteered; ")


def test_score_json_matches_sdk(live_server: LiveServer, vector: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--url", live_server.url, "score", PROMPT, *CONTINUATIONS, "--json")
    assert code == 0, err
    plain = fv.Score.model_validate(json.loads(out))
    assert plain == sdk_score(live_server)

    code, out, err = run(
        capsys, "--url", live_server.url, "score", PROMPT, *CONTINUATIONS, "--relation", f"{vector}=-0.5",
        "--layer", "1", "--scale", "2", "--positions", "all", "--json",
    )
    assert code == 0, err
    steered = fv.Score.model_validate(json.loads(out))
    assert steered == sdk_score(live_server, relations={vector: -0.5}, layer=1, scale=2.0, positions="all")
    assert steered.steering is not None
    assert steered.steering.relations == {vector: -0.5} and set(steered.steering.layers) == {1}
    assert [s.logprob for s in steered.scores] != pytest.approx([s.logprob for s in plain.scores], abs=1e-4)
    for scored in steered.scores:
        assert scored.logprob == pytest.approx(sum(t.logprob for t in scored.tokens), abs=1e-4)
    totals = [s.logprob for s in steered.scores]
    assert steered.best == totals.index(max(totals))


def test_score_steered_human(live_server: LiveServer, vector: str, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompt from stdin, server from FVSTEER_URL; the steering applied is reported on stderr."""
    monkeypatch.setenv("FVSTEER_URL", live_server.url)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPT))
    code, out, err = run(capsys, "score", "-", *CONTINUATIONS, "--relation", vector)
    assert code == 0, err
    expected = sdk_score(live_server, relations={vector: 1.0})
    assert [c for *_, c, _ in parse_lines(out)] == [s.continuation for _, s in expected.ranked()]
    assert err.startswith(f"steered: {vector}=1; layer 2 norm ")


def test_score_errors(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--url", live_server.url, "score", PROMPT, " cold", "--relation", unique("nope"))
    assert (code, out) == (1, "")
    assert err.startswith("error: not_found: ")
    code, out, err = run(capsys, "--url", live_server.url, "score", PROMPT, *[f"c{i}" for i in range(33)])
    assert (code, out) == (1, "")
    assert err.startswith("error: invalid_request: ")
    for argv in (
        ["score", PROMPT],
        ["score", PROMPT, "x", "--relation", "a=1", "--relation", "a=2"],
        ["score", PROMPT, "x", "--positions", "middle"],
        ["score", PROMPT, "x", "--scale", "lots"],
        ["presets", "put", "p"],
        ["presets", "frobnicate"],
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert "usage:" in err, argv


def test_presets_put_list_delete(live_server: LiveServer, vector: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("preset")
    code, out, err = run(capsys, *admin_args(live_server), "presets", "put", name, "--relation", f"{vector}=1.5",
                         "--scale", "2", "--positions", "all", "--description", "warm, not cold")
    assert code == 0, err
    saved = {key: value.strip() for key, _, value in (line.partition(" ") for line in out.splitlines())}
    assert saved["created"] == name
    assert (saved["relations"], saved["scale"], saved["layer"], saved["positions"], saved["status"]) == (
        f"{vector}=1.5", "2", "own", "all", "ok")
    assert saved["description"] == "warm, not cold"

    code, out, err = run(capsys, *admin_args(live_server), "presets", "put", name, "--relation", vector,
                         "--layer", "1", "--json")
    assert code == 0, err
    replaced = fv.Preset.model_validate(json.loads(out))
    assert (replaced.relations, replaced.scale, replaced.layer, replaced.positions, replaced.description) == (
        {vector: 1.0}, 1.0, 1, "fv", None)

    code, out, err = run(capsys, *admin_args(live_server), "presets", "list")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "STATUS", "RELATIONS", "SCALE", "LAYER", "POSITIONS", "DESCRIPTION"]
    assert next(row.split() for row in rows if row.startswith(name + " ")) == [name, "ok", f"{vector}=1", "1", "1",
                                                                                 "fv"]
    code, out, _ = run(capsys, *admin_args(live_server), "presets", "list", "--json")
    assert code == 0
    assert {p["name"]: p for p in json.loads(out)}[name] == replaced.model_dump(mode="json")

    code, _, err = run(capsys, "--url", live_server.url, "presets", "list")
    assert (code, err.split(":")[:2]) == (1, ["error", " unauthorized"])

    assert run(capsys, *admin_args(live_server), "presets", "delete", name)[:2] == (0, f"deleted {name}\n")
    code, _, err = run(capsys, *admin_args(live_server), "presets", "delete", name)
    assert code == 1 and err.startswith("error: not_found: ")


def test_presets_list_reports_broken(live_server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Server and token from the environment; a preset whose vector is gone is listed broken, with what is missing."""
    monkeypatch.setenv("FVSTEER_URL", live_server.url)
    monkeypatch.setenv("FVSTEER_ADMIN_TOKEN", live_server.admin_token)
    gone, name = unique("gone"), unique("preset")
    path, _ = make_vector(tmp_path, live_server.d_model, gone, seed=32)
    assert run(capsys, "vectors", "import", str(path), "--name", gone, "--layer", "0")[0] == 0
    try:
        assert run(capsys, "presets", "put", name, "--relation", gone)[0] == 0
        assert run(capsys, "vectors", "delete", gone)[0] == 0
        code, out, err = run(capsys, "presets", "list")
        assert code == 0
        assert next(row.split() for row in out.splitlines() if row.startswith(name + " "))[1] == "broken"
        assert f"broken: {name}: missing {gone}\n" in err
    finally:
        run(capsys, "presets", "delete", name)
        run(capsys, "vectors", "delete", gone)
