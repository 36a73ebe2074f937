"""Steering presets ("steered models"): the store (validation, persistence, atomic writes, broken presets) and its
admin routes, in process (tests.harness: the app on httpx's ASGI transport, no model)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.engine.requests import BankSteering
from app.errors import FvsteerError, InvalidInput, MissingBank, NotFound
from app.registry.registry import VectorRegistry
from app.services.presets import FILE_NAME, PresetSpec, PresetStore
from tests.harness import MODEL, N_LAYERS, Harness, make_harness

ADMIN = {"Authorization": "Bearer harness-token"}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    harness = make_harness(tmp_path)
    harness.add_vector("up", 1, [3.0, 4.0, 0.0, 0.0])
    harness.add_vector("side", 2, [0.0, 0.0, 1.0, 0.0])
    yield harness
    harness.runtime.stop()


def store_of(harness: Harness) -> PresetStore:
    return harness.runtime.services().presets


def request(harness: Harness, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
            ) -> httpx.Response:
    async def run() -> httpx.Response:
        async with harness.client() as client:
            return await client.request(method, path, json=body, headers=ADMIN if headers is None else headers)

    return asyncio.run(run())


def spec(**fields: Any) -> PresetSpec:
    return PresetSpec(**{"relations": {"up": 1.0}, **fields})


def test_create_replace_list_and_delete(harness: Harness) -> None:
    body = {"relations": {"up": 2.0, "side": -0.5}, "scale": 1.5, "layer": 0, "positions": "all",
            "description": "up, a little sideways"}
    created = request(harness, "PUT", "/admin/presets/upward", body)
    assert created.status_code == 201, created.text
    view = created.json()
    assert {key: view[key] for key in body} == body
    assert view["name"] == "upward" and view["status"] == "ok" and view["missing"] == []
    assert view["created"] == view["updated"]

    replaced = request(harness, "PUT", "/admin/presets/upward", {"relations": {"side": 1.0}})
    assert replaced.status_code == 200, replaced.text
    again = replaced.json()
    assert again["relations"] == {"side": 1.0} and again["scale"] == 1.0 and again["layer"] is None
    assert again["positions"] == "fv" and again["description"] is None
    assert again["created"] == view["created"] and again["updated"] >= view["updated"]

    request(harness, "PUT", "/admin/presets/aside", {"relations": {"up": 1.0}})
    listed = request(harness, "GET", "/admin/presets").json()["presets"]
    assert [preset["name"] for preset in listed] == ["aside", "upward"] and listed[1] == again

    assert request(harness, "DELETE", "/admin/presets/upward").json() == {"deleted": "upward"}
    assert [preset["name"] for preset in request(harness, "GET", "/admin/presets").json()["presets"]] == ["aside"]
    gone = request(harness, "DELETE", "/admin/presets/upward")
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "name"


def test_a_preset_steers_as_its_spec_says(harness: Harness) -> None:
    store_of(harness).put("mix", spec(relations={"up": 2.0, "side": 0.0}, scale=-1.0, layer=2, positions="all"))
    steering = store_of(harness).steering("mix")
    assert steering == BankSteering({"up": 2.0, "side": 0.0}, scale=-1.0, layer=2, positions="all")
    harness.backend.check_steering(steering)  # the bank accepts it as it is


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic harness-token"}])
@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/presets"), ("PUT", "/admin/presets/p"),
                                              ("DELETE", "/admin/presets/p")])
def test_every_route_needs_the_token(harness: Harness, method: str, path: str, headers: dict[str, str]) -> None:
    response = request(harness, method, path, {"relations": {"up": 1.0}}, headers=headers)
    assert response.status_code == 401 and response.json()["error"]["type"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert store_of(harness).list() == []


def test_without_a_configured_token_the_routes_are_forbidden(harness: Harness) -> None:
    harness.app.state.settings = harness.app.state.settings.model_copy(update={"admin_token": None})
    for method, path in [("GET", "/admin/presets"), ("PUT", "/admin/presets/p"), ("DELETE", "/admin/presets/p")]:
        response = request(harness, method, path, {"relations": {"up": 1.0}})
        assert response.status_code == 403 and response.json()["error"]["type"] == "forbidden"


@pytest.mark.parametrize(("name", "body", "status", "param", "says"), [
    ("p", {"relations": {"nope": 1.0}}, 404, "relations.nope", "nope"),
    ("p", {"relations": {"up": 1.0, "gone": 1.0}}, 404, "relations.gone", "gone"),
    ("p", {"relations": {"up": 1.0}, "layer": N_LAYERS}, 422, "layer", f"0..{N_LAYERS - 1}"),
    ("p", {"relations": {"up": 1.0}, "layer": -1}, 422, "layer", "greater than or equal to 0"),
    ("p", {"relations": {}}, 422, "relations", "at least 1"),
    ("p", {"relations": {f"v{i}": 1.0 for i in range(65)}}, 422, "relations", "at most 64"),
    ("p", {"relations": {"up": 1001.0}}, 422, "relations.up", "1000"),
    ("p", {"relations": {"up": 1.0}, "scale": 101.0}, 422, "scale", "100"),
    ("p", {"relations": {"up": 1.0}, "positions": "some"}, 422, "positions", "fv"),
    ("p", {"relations": {"up": 1.0}, "description": "x" * 501}, 422, "description", "500"),
    ("p", {"relations": {"up": 1.0}, "temperature": 0.5}, 422, "temperature", "unknown field"),
    ("p", {}, 422, "relations", "required"),
    ("up+side", {"relations": {"up": 1.0}}, 422, "name", "'+'"),
    (MODEL, {"relations": {"up": 1.0}}, 422, "name", "base model"),
    ("Bad", {"relations": {"up": 1.0}}, 422, "name", "a-z"),
    ("-p", {"relations": {"up": 1.0}}, 422, "name", "a-z"),
    ("a..b", {"relations": {"up": 1.0}}, 422, "name", "a-z"),
    ("x" * 65, {"relations": {"up": 1.0}}, 422, "name", "1-64"),
])
def test_refusals_name_the_parameter_and_save_nothing(harness: Harness, name: str, body: dict[str, Any], status: int,
                                                      param: str, says: str) -> None:
    response = request(harness, "PUT", f"/admin/presets/{name}", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert store_of(harness).list() == [] and not (harness.registry.folder / FILE_NAME).exists()


def test_non_finite_weights_and_scale_are_refused(harness: Harness) -> None:
    for body, param in [({"relations": {"up": float("nan")}}, "relations.up"),
                        ({"relations": {"up": 1.0}, "scale": float("inf")}, "scale")]:
        response = asyncio.run(_raw_put(harness, json.dumps(body, allow_nan=True)))
        assert response.status_code == 422 and response.json()["error"]["param"] == param


async def _raw_put(harness: Harness, content: str) -> httpx.Response:
    async with harness.client() as client:
        return await client.put("/admin/presets/p", content=content,
                                headers={**ADMIN, "content-type": "application/json"})


def test_the_store_refuses_what_the_routes_refuse(harness: Harness) -> None:
    store = store_of(harness)
    cases: list[tuple[str, PresetSpec, type[FvsteerError], str]] = [
        ("p", spec(relations={"nope": 1.0}), NotFound, "relations.nope"),
        ("p", spec(layer=N_LAYERS), InvalidInput, "layer"),
        ("a+b", spec(), InvalidInput, "name"),
        (MODEL, spec(), InvalidInput, "name"),
    ]
    for name, preset, error, param in cases:
        with pytest.raises(error) as raised:
            store.put(name, preset)
        assert raised.value.param == param
    for missing in (store.get, store.delete, store.steering):
        with pytest.raises(NotFound):
            missing("nope")
    mixed = PresetStore(store.registry, N_LAYERS, "SmolLM2-135M-Instruct")
    with pytest.raises(InvalidInput, match="base model's id") as raised:  # it used to shadow the base model
        mixed.put("smollm2-135m-instruct", spec())
    assert raised.value.param == "name"


def test_a_preset_survives_a_restart(harness: Harness) -> None:
    store = store_of(harness)
    saved, created = store.put("keep", spec(relations={"up": 1.0, "side": 2.0}, scale=0.5, description="kept"))
    assert created
    again = PresetStore(harness.registry, N_LAYERS, MODEL)
    assert again.list() == store.list() and again.get("keep").model_dump(exclude={"status", "missing"}) == \
        saved.model_dump()
    replaced, created = again.put("keep", spec())
    assert not created and replaced.created == saved.created and replaced.updated >= saved.updated


def test_the_registry_ignores_the_presets_file(harness: Harness) -> None:
    store_of(harness).put("p", spec())
    harness.registry.load()
    assert harness.registry.refused == [] and [stored.name for stored in harness.registry.list()] == ["side", "up"]


def test_every_write_leaves_a_whole_file_and_no_staging_files(harness: Harness) -> None:
    store, path = store_of(harness), harness.registry.folder / FILE_NAME
    for index in range(5):
        store.put(f"p{index}", spec(relations={"up": float(index)}))
        document = json.loads(path.read_text())
        assert document["format"] == "fvsteer-presets/1"
        assert [preset["name"] for preset in document["presets"]] == [f"p{i}" for i in range(index + 1)]
    store.delete("p0")
    assert [preset["name"] for preset in json.loads(path.read_text())["presets"]] == ["p1", "p2", "p3", "p4"]
    assert sorted(item.name for item in path.parent.iterdir() if not item.name.endswith(".safetensors")) == [FILE_NAME]


def test_a_failed_write_changes_nothing(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    store, path = store_of(harness), harness.registry.folder / FILE_NAME
    store.put("before", spec())
    on_disk = path.read_bytes()

    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        store.put("after", spec())
    with pytest.raises(OSError):
        store.delete("before")
    assert path.read_bytes() == on_disk and [preset.name for preset in store.list()] == ["before"]
    assert [item.name for item in path.parent.iterdir() if item.name.startswith(FILE_NAME)] == [FILE_NAME]


def test_concurrent_writes_all_land(harness: Harness) -> None:
    store = store_of(harness)
    names = [f"p{index:02d}" for index in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda name: store.put(name, spec()), names))
    on_disk = json.loads((harness.registry.folder / FILE_NAME).read_text())["presets"]
    assert [preset["name"] for preset in on_disk] == names == [preset.name for preset in store.list()]


@pytest.mark.parametrize("content", ["{not json", '{"format": "fvsteer-presets/9", "presets": []}',
                                     '{"format": "fvsteer-presets/1", "presets": [{"name": "BAD"}]}', ""])
def test_a_corrupt_file_is_set_aside_and_the_store_starts_empty(harness: Harness, content: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = harness.registry.folder / FILE_NAME
    path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="app.services.presets"):
        store = PresetStore(harness.registry, N_LAYERS, MODEL)
    assert store.list() == [] and not path.exists()
    aside = [item for item in path.parent.iterdir() if item.name.startswith(f"{FILE_NAME}.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == content
    assert any("unreadable" in record.getMessage() for record in caplog.records)
    store.put("fresh", spec())
    assert [preset.name for preset in PresetStore(harness.registry, N_LAYERS, MODEL).list()] == ["fresh"]


def test_a_deleted_vector_breaks_the_preset_until_it_is_back(harness: Harness) -> None:
    store = store_of(harness)
    store.put("both", spec(relations={"up": 1.0, "side": 1.0}))
    store.put("only-up", spec())
    harness.registry.delete("side")

    listed = {preset["name"]: preset for preset in request(harness, "GET", "/admin/presets").json()["presets"]}
    assert (listed["both"]["status"], listed["both"]["missing"]) == ("broken", ["side"])
    assert (listed["only-up"]["status"], listed["only-up"]["missing"]) == ("ok", [])
    with pytest.raises(MissingBank) as raised:
        store.steering("both")
    assert raised.value.status == 409 and "'side'" in raised.value.message and raised.value.param == "model"
    store.steering("only-up")

    harness.add_vector("side", 0, [0.0, 1.0, 0.0, 0.0])
    view = store.get("both")
    assert (view.status, view.missing) == ("ok", [])
    assert store.steering("both").weights == {"up": 1.0, "side": 1.0}


def test_a_broken_preset_is_kept_over_a_restart(harness: Harness) -> None:
    store_of(harness).put("p", spec(relations={"up": 1.0, "side": 1.0}))
    harness.registry.delete("up")
    fresh = VectorRegistry(harness.registry.folder.parent, harness.registry.model)
    fresh.load()
    view = PresetStore(fresh, N_LAYERS, MODEL).get("p")
    assert (view.status, view.missing) == ("broken", ["up"])
