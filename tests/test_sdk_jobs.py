"""The SDK's jobs, extraction, evaluation and decoding against a real server (tiny random llama), over HTTP.

Extractions use small settings (8 prompts, 3 trials, 3 heads) so each takes well under a second on the tiny
model; vectors get unique names and are deleted afterwards, since the session server is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import random
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fvsteer_client as fv
import pytest
import torch
from safetensors.torch import save

from tests.conftest import LiveServer
from tests.faults import Faults

RELATIONS = Path(__file__).resolve().parent.parent / "app" / "fv" / "relations"
SMALL: dict[str, Any] = {"n_prompts": 8, "n_trials": 3, "n_heads": 3}
PROMPT = "Q: hot\nA:"


def unique(prefix: str = "j") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def antonym_pairs(n: int = 24) -> list[dict[str, str]]:
    """The first ``n`` shipped antonym pairs, each with its primary answer only (a CSV row holds one answer)."""
    pairs: list[dict[str, Any]] = json.loads((RELATIONS / "antonym.json").read_text())
    return [{"input": p["input"], "output": p["output"] if isinstance(p["output"], str) else p["output"][0]}
            for p in pairs[:n]]


def fresh_seed() -> int:
    return random.randrange(1_000, 2**31 - 1)


def delete_quietly(client: fv.Client, name: str) -> None:
    with contextlib.suppress(fv.NotFoundError):
        client.admin.delete_vector(name)


@pytest.fixture(scope="module")
def module_client(live_server: LiveServer) -> Iterator[fv.Client]:
    with fv.Client(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
        yield c


@pytest.fixture
def client(module_client: fv.Client) -> fv.Client:
    return module_client


@pytest.fixture(scope="module")
def extracted(module_client: fv.Client) -> Iterator[fv.Job]:
    """One finished extraction (by relation), shared by the tests that only read it."""
    name = unique("fv")
    job = module_client.extract(name, relation="antonym", **SMALL)
    final = module_client.wait_for_job(job, timeout=60)
    assert final.state == "succeeded", final
    yield final
    delete_quietly(module_client, name)


def test_extract_by_relation(live_server: LiveServer, client: fv.Client, extracted: fv.Job) -> None:
    assert extracted.kind == "extract"
    assert extracted.done and extracted.progress == 1.0
    assert extracted.error is None
    result = extracted.result
    assert result is not None and extracted.vector == result["vector"]
    assert 0 <= result["layer"] < live_server.n_layers
    assert len(result["heads"]) == SMALL["n_heads"]
    assert set(result["phase_seconds"]) >= {"means", "scoring", "layer_sweep"}
    assert set(result["head_means_cache"]) == {"hit", "backend"}
    metrics = result["metrics"]
    assert len(metrics["aie"]) == live_server.n_layers
    assert set(metrics["layer_sweep"]) == {str(layer) for layer in range(live_server.n_layers)}
    assert 0.0 <= metrics["sweep_zero_shot_fv_top1"] <= 1.0

    info = client.get_vector(result["vector"])
    assert info.layer == result["layer"]
    assert info.relation == "antonym"
    assert [h[:2] for h in info.heads] == [h[:2] for h in result["heads"]]  # (layer, head); stored AIEs are rounded
    assert info.metrics["layer_sweep"] == metrics["layer_sweep"]
    assert info.norm == pytest.approx(result["norm"], rel=1e-4)

    out = client.complete(PROMPT, relations={info.name: 1.0}, max_new_tokens=4)
    assert out.steering is not None
    assert set(out.steering.layers) == {info.layer}


@pytest.mark.parametrize("form", ["json", "csv-header", "csv-bare", "tuples"])
def test_extract_by_pairs(client: fv.Client, tmp_path: Path, form: str) -> None:
    pairs = antonym_pairs()
    source: Any
    if form == "json":
        source = tmp_path / "pairs.json"
        source.write_text(json.dumps(pairs))
    elif form.startswith("csv"):
        source = tmp_path / "pairs.csv"
        with source.open("w", newline="") as out:
            writer = csv.writer(out)
            if form == "csv-header":
                writer.writerow(["input", "output"])
            writer.writerows([p["input"], p["output"]] for p in pairs)
        source = str(source)
    else:
        source = [(p["input"], p["output"]) for p in pairs]
    name = unique("pairs")
    try:
        job = client.extract(name, pairs=source, layer=1, seed=3, **SMALL)
        assert job.state in {"queued", "running"}
        final = client.wait_for_job(job.id, timeout=60)
        assert final.state == "succeeded", final
        assert final.vector == name
        assert final.result is not None and final.result["layer"] == 1
        info = client.get_vector(name)
        assert (info.relation, info.layer) == ("custom", 1)
        assert client.complete(PROMPT, relations={name: 0.5}, max_new_tokens=3).steering is not None
    finally:
        delete_quietly(client, name)


def test_job_events_progress_then_end(gated_server: LiveServer) -> None:
    faults = Faults(gated_server)
    name = unique("ev")
    with fv.Client(gated_server.url, admin_token=gated_server.admin_token, timeout=60) as client:
        try:
            with faults.held("tasks", after=1):  # the job waits at its second forward, having reported progress
                job = client.extract(name, relation="synonym", seed=fresh_seed(), **SMALL)
                events = client.job_events(job)
                snapshots = []
                for snapshot in events:
                    snapshots.append(snapshot)
                    if snapshot.state == "running" and snapshot.progress > 0.0:
                        break  # seen mid-way: the job waits at the gate
                mid = snapshots[-1]
            snapshots += list(events)
            *during, last = snapshots
            assert during and all(s.id == job.id and not s.done for s in during)
            assert last.done and last.state == "succeeded" and last.vector == name
            progress = [s.progress for s in snapshots]
            assert progress == sorted(progress)
            assert mid in during and 0.0 < mid.progress < 1.0
            # a finished job's stream is just its end event; get_job agrees with it
            assert list(client.job_events(job.id)) == [last]
            assert client.get_job(job) == last
            # cancelling a finished job changes nothing
            assert client.cancel_job(job) == last
        finally:
            delete_quietly(client, name)


def test_wait_timeout_then_cancel(gated_server: LiveServer) -> None:
    faults = Faults(gated_server)
    name = unique("held")
    with fv.Client(gated_server.url, admin_token=gated_server.admin_token, timeout=60) as client:
        with faults.held("tasks"):  # the job is running and cannot finish
            job = client.extract(name, relation="antonym", seed=fresh_seed(), **SMALL)
            faults.wait_parked("tasks")
            with pytest.raises(fv.JobTimeoutError) as caught:
                client.wait_for_job(job, timeout=0.3)
            assert caught.value.job_id == job.id
            assert caught.value.job is None or not caught.value.job.done
            answer = client.cancel_job(job)
            assert answer.id == job.id and answer.state == "running"
        seen: list[fv.Job] = []
        final = client.wait_for_job(job, timeout=60, on_progress=seen.append)  # a cancelled job is returned
        assert final.state == "cancelled"
        assert final.result is None
        assert seen and seen[-1] == final
        with pytest.raises(fv.NotFoundError):
            client.get_vector(name)
        assert name not in {v.name for v in client.list_vectors()}


def test_async_wait_timeout_then_cancel(gated_server: LiveServer) -> None:
    faults = Faults(gated_server)

    async def scenario() -> None:
        async with fv.AsyncClient(gated_server.url, admin_token=gated_server.admin_token, timeout=60) as c:
            with faults.held("tasks"):
                held = await c.extract(unique("aheld"), relation="antonym", seed=fresh_seed(), **SMALL)
                await asyncio.to_thread(faults.wait_parked, "tasks")
                with pytest.raises(fv.JobTimeoutError):
                    await c.wait_for_job(held, timeout=0.2)
                assert (await c.cancel_job(held)).state == "running"
            assert (await c.wait_for_job(held, timeout=60)).state == "cancelled"

    asyncio.run(scenario())


def test_a_name_being_made_is_refused_at_once(client: fv.Client) -> None:
    """The server reserves a job's vector name at submit: a second job for it is a 409, not a late failure."""
    name = unique("race")
    try:
        first = client.extract(name, relation="antonym", seed=fresh_seed(), **SMALL)
        with pytest.raises(fv.ConflictError) as caught:
            client.extract(name, relation="antonym", seed=fresh_seed(), **SMALL)
        assert caught.value.param == "name"
        assert client.wait_for_job(first, timeout=60).state == "succeeded"
        with pytest.raises(fv.ConflictError):
            client.extract(name, relation="antonym", seed=fresh_seed(), **SMALL)
    finally:
        delete_quietly(client, name)


def test_evaluate(client: fv.Client, extracted: fv.Job, tmp_path: Path) -> None:
    name = extracted.vector
    assert name is not None
    result = client.evaluate(name, relation="antonym", seed=1, shots=4)
    assert (result.vector, result.relation) == (name, "antonym")
    assert result.layer == client.get_vector(name).layer
    for setting in (result.zero_shot, result.zero_shot_fv, result.icl, result.icl_shuffled, result.icl_shuffled_fv):
        assert 0.0 <= setting.top1 <= setting.top3 <= 1.0
    assert result.n >= 0 and result.n_dropped >= 0 and result.n + result.n_dropped > 0

    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(antonym_pairs(15)))
    custom = client.evaluate(name, pairs=path)
    assert custom.relation == "custom"
    assert custom.n + custom.n_dropped == 15


def test_decode_vector(client: fv.Client, extracted: fv.Job) -> None:
    name = extracted.vector
    assert name is not None
    decoded = client.decode_vector(name, k=5)
    assert decoded.name == name
    assert extracted.result is not None and decoded.layer == extracted.result["layer"]
    assert len(decoded.tokens) == 5
    probs = [t.prob for t in decoded.tokens]
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 < p <= 1.0 for p in probs)
    assert len(client.decode_vector(name).tokens) == 10


def test_errors_are_typed(client: fv.Client, extracted: fv.Job, tmp_path: Path) -> None:
    with pytest.raises(fv.InvalidRequestError) as few:
        client.extract(unique(), pairs=antonym_pairs(5), **SMALL)
    assert few.value.status_code == 422
    assert "12" in few.value.message
    with pytest.raises(fv.NotFoundError) as unknown:
        client.extract(unique(), relation="no-such-relation")
    assert unknown.value.status_code == 404 and unknown.value.param == "relation"
    assert extracted.vector is not None
    with pytest.raises(fv.ConflictError) as taken:
        client.extract(extracted.vector, relation="antonym", **SMALL)
    assert taken.value.status_code == 409
    with pytest.raises(fv.InvalidRequestError):
        client.extract(unique(), relation="antonym", pairs=antonym_pairs())
    with pytest.raises(fv.InvalidRequestError):
        client.extract(unique(), relation="antonym", n_prompts=0)

    missing_job = "job-" + "0" * 16
    for call in (client.get_job, client.cancel_job, client.wait_for_job, lambda j: list(client.job_events(j))):
        with pytest.raises(fv.NotFoundError):
            call(missing_job)
    with pytest.raises(fv.InvalidRequestError):
        client.get_job("not-a-job")

    with pytest.raises(fv.NotFoundError):
        client.evaluate(unique("missing"), relation="antonym")
    with pytest.raises(fv.NotFoundError):
        client.decode_vector(unique("missing"))
    with pytest.raises(fv.InvalidRequestError):
        client.decode_vector(extracted.vector, k=0)

    # caught before anything is sent
    bad = tmp_path / "bad.csv"
    bad.write_text("input,output\nhot,cold,warm\n")
    with pytest.raises(fv.InvalidPairsError, match="row 2 has 3 columns"):
        client.extract(unique(), pairs=bad)
    with pytest.raises(TypeError, match="n_layers"):
        client.extract(unique(), relation="antonym", n_layers=3)  # type: ignore[call-arg]
    with pytest.raises(FileNotFoundError):
        client.evaluate(extracted.vector, pairs=tmp_path / "absent.json")


def test_ready_and_vector_info_defaults(live_server: LiveServer, client: fv.Client) -> None:
    assert client.ready().cache in {"memory", "redis", "degraded"}
    name = unique("imp")
    client.admin.upload_vector(save({"vector": torch.ones(live_server.d_model)}), name=name, layer=0)
    try:
        info = client.get_vector(name)
        assert info.heads == [] and info.metrics == {}
    finally:
        delete_quietly(client, name)


def test_async_client(live_server: LiveServer) -> None:
    async def scenario() -> None:
        async with fv.AsyncClient(live_server.url, admin_token=live_server.admin_token, timeout=60) as c:
            name = unique("async")
            phases: list[str] = []

            async def on_progress(job: fv.Job) -> None:
                phases.append(job.phase)

            try:
                job = await c.extract(name, pairs=antonym_pairs(), **SMALL)
                final = await c.wait_for_job(job, timeout=60, on_progress=on_progress)
                assert final.state == "succeeded" and final.vector == name
                assert phases[-1] == final.phase
                assert [s async for s in c.job_events(job)] == [final]
                assert await c.get_job(job.id) == final
                assert await c.cancel_job(job) == final
                assert (await c.get_vector(name)).heads
                evaluation = await c.evaluate(name, relation="antonym", shots=3)
                assert evaluation.vector == name
                assert len((await c.decode_vector(name, k=3)).tokens) == 3
                assert (await c.ready()).cache is not None

                with pytest.raises(fv.ConflictError):
                    await c.extract(name, relation="antonym")
                with pytest.raises(fv.NotFoundError):
                    await c.wait_for_job("job-" + "f" * 16)

            finally:
                with contextlib.suppress(fv.NotFoundError):
                    await c.admin.delete_vector(name)

    asyncio.run(scenario())


# --- pairs files, read client-side ---------------------------------------------------------------------------------


def test_load_pairs(tmp_path: Path) -> None:
    expected = [{"input": "hot", "output": "cold"}, {"input": "a, b", "output": "c"}]
    (tmp_path / "p.json").write_text(json.dumps([*expected[:1], {"input": "a, b", "output": "c", "note": "x"}]))
    (tmp_path / "p.csv").write_text('\ufeffInput,Output\nhot,cold\n\n"a, b",c\n', encoding="utf-8")
    (tmp_path / "bare.csv").write_text('hot,cold\r\n"a, b",c\r\n')
    (tmp_path / "lists.txt").write_text('[["hot", "cold"], ["a, b", "c"]]')
    (tmp_path / "plain.txt").write_text('hot,cold\n"a, b",c\n')
    for name in ("p.json", "p.csv", "bare.csv", "lists.txt", "plain.txt"):
        assert fv.load_pairs(tmp_path / name) == expected, name
    assert fv.load_pairs(str(tmp_path / "p.csv")) == expected

    for name, content, message in (
        ("broken.json", "[{", "not valid JSON"),
        ("object.json", '{"input": "hot"}', "must be a list"),
        ("keys.json", '[{"in": "hot", "out": "cold"}]', r"\[0\] needs both"),
        ("numbers.json", '[{"input": 1, "output": 2}]', "input must be a string, output a string or a list of strings"),
        ("three.csv", "a,b\nc,d,e\n", "row 2 has 3 columns"),
    ):
        (tmp_path / name).write_text(content)
        with pytest.raises(fv.InvalidPairsError, match=message):
            fv.load_pairs(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        fv.load_pairs(tmp_path / "absent.csv")


# --- event streams the fvsteer server does not send today, but a proxy or a later version can ----------------------

_JOB = {"id": "job-" + "a" * 16, "kind": "extract", "phase": "means", "result": None, "error": None,
        "created": "t0", "updated": "t1", "extra": "ignored"}


def _event(name: str, state: str, progress: float) -> str:
    return f"event: {name}\ndata: {json.dumps({**_JOB, 'state': state, 'progress': progress})}\n\n"


_FAILED = {**_JOB, "state": "failed", "progress": 0.5, "error": {"type": "internal_error", "message": "boom"}}
_STREAMS: dict[str, str] = {
    # keep-alive comments, CRLF line ends, an event type this client does not know, data split over lines
    "ok": (": keep-alive\r\n\r\n" + _event("progress", "running", 0.5).replace("\n", "\r\n")
           + "event: hint\ndata: {}\n\n"
           + "event: end\n" + "".join(f"data: {line}\n" for line in json.dumps(_FAILED, indent=1).splitlines()) + "\n"),
    "error": _event("progress", "running", 0.1)
    + 'event: error\ndata: {"error": {"type": "not_found", "message": "job vanished", "param": "id"}}\n\n',
    "cut": _event("progress", "running", 0.2),
    "junk": "event: progress\ndata: {not json}\n\n",
}


class _SSEHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        kind = self.path.split("/")[2]
        body = _STREAMS[kind].encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SSEHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_event_stream_parsing(sse_url: str) -> None:
    with fv.Client(sse_url, timeout=10) as c:
        snapshots = list(c.job_events("ok"))
        assert [(s.state, s.progress) for s in snapshots] == [("running", 0.5), ("failed", 0.5)]
        with pytest.raises(fv.JobFailedError) as failed:
            c.wait_for_job("ok")
        assert (failed.value.type, failed.value.message) == ("internal_error", "boom")

        with pytest.raises(fv.NotFoundError) as vanished:
            list(c.job_events("error"))
        assert (vanished.value.status_code, vanished.value.param) == (404, "id")

        events = c.job_events("cut")
        assert next(events).progress == 0.2
        with pytest.raises(fv.APIConnectionError, match="closed before the job ended"):
            next(events)

        with pytest.raises(fv.APIResponseValidationError):
            c.wait_for_job("junk")

    async def scenario() -> None:
        async with fv.AsyncClient(sse_url, timeout=10) as ac:
            assert [s.state async for s in ac.job_events("ok")] == ["running", "failed"]
            with pytest.raises(fv.JobFailedError):
                await ac.wait_for_job("ok")
            with pytest.raises(fv.APIConnectionError):
                await ac.wait_for_job("cut")

    asyncio.run(scenario())
