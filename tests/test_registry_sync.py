"""One registry for all replicas (issue 14): registries of two processes on one shared folder and one Redis.

Every wait polls with a deadline; nothing sleeps to order events. Each test has its own model slug, hence its own
channel, on a private redis-server."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import torch
from safetensors.torch import save_file

from app.engine.bank import VectorBank
from app.errors import Conflict, NotFound
from app.registry.registry import ModelIdentity, RegistryChange, VectorRegistry
from app.registry.sync import CHANNEL_PREFIX, RegistrySync, start_registry_sync
from app.registry.vector_file import _link_exclusively, create_vector_file, read_vector_file
from app.services.presets import PresetSpec, PresetStore
from app.settings import Settings
from tests.conftest import free_port, start_redis

PROPAGATION_S = 2.0  # the promise: every replica serves or refuses a vector within 2 s of the change
RECONNECT_S = 15.0


@dataclass
class Replica:
    """What one process holds: its registry, what its listeners heard, its sync."""

    registry: VectorRegistry
    sync: RegistrySync | None
    changes: list[RegistryChange] = field(default_factory=list)

    def heard(self) -> list[tuple[str, str | None]]:
        return [(change.kind, change.name) for change in self.changes if change.kind != "reloaded"]

    def names(self) -> list[str]:
        return [stored.name for stored in self.registry.list()]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.005)


def holds(replica: Replica, name: str) -> bool:
    try:
        replica.registry.get(name)
    except NotFound:
        return False
    return True


def vector(value: float) -> torch.Tensor:
    return torch.full((8,), value)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    process = start_redis(port)
    yield f"redis://127.0.0.1:{port}/0", port
    process.kill()
    process.wait()


@pytest.fixture
def model() -> ModelIdentity:
    return ModelIdentity(name="tiny", slug=f"tiny-{secrets.token_hex(4)}", fingerprint="abc123", d_model=8, n_layers=4)


@pytest.fixture
def replicas(tmp_path: Path, model: ModelIdentity) -> Iterator[Callable[..., Replica]]:
    """Make replicas on one shared folder; their syncs are stopped at the end."""
    made: list[Replica] = []

    def make(url: str | None, resync_s: float = 3600.0) -> Replica:
        registry = VectorRegistry(tmp_path, model)
        registry.load()
        replica = Replica(registry, RegistrySync(registry, url, resync_s) if url else None)
        registry.subscribe(replica.changes.append)
        if replica.sync is not None:
            replica.sync.start()
        made.append(replica)
        return replica

    yield make
    for replica in made:
        if replica.sync is not None:
            replica.sync.stop()


def wait_subscribed(port: int, model: ModelIdentity, count: int) -> None:
    client = redis.Redis(port=port)
    channel = CHANNEL_PREFIX + model.slug
    wait_until(lambda: client.pubsub_numsub(channel)[0][1] == count, RECONNECT_S, f"{count} subscribers")
    client.close()


def test_a_save_and_a_deletion_reach_the_other_replica_and_its_bank(
    replicas: Callable[..., Replica], redis_server: tuple[str, int], model: ModelIdentity
) -> None:
    url, port = redis_server
    a, b = replicas(url), replicas(url)
    bank = VectorBank(model.n_layers, model.d_model, torch.device("cpu"))
    b.registry.subscribe(bank.apply)
    wait_subscribed(port, model, 2)

    a.registry.add(vector(1.0), {"name": "antonym", "layer": "2"})
    wait_until(lambda: holds(b, "antonym") and "antonym" in bank, PROPAGATION_S, "B serves the vector A saved")
    assert torch.equal(b.registry.get("antonym").vector, vector(1.0))
    assert torch.equal(bank.table(2)[0], vector(1.0))

    a.registry.delete("antonym")
    wait_until(lambda: not holds(b, "antonym") and "antonym" not in bank, PROPAGATION_S, "B refuses it")
    with pytest.raises(NotFound):
        b.registry.get("antonym")
    with pytest.raises(NotFound):
        b.registry.delete("antonym")
    assert b.heard() == [("saved", "antonym"), ("deleted", "antonym")]
    assert a.heard() == [("saved", "antonym"), ("deleted", "antonym")]  # its own changes, once each


def test_one_name_made_at_once_on_two_replicas_is_made_once(
    replicas: Callable[..., Replica], redis_server: tuple[str, int], model: ModelIdentity
) -> None:
    url, port = redis_server
    a, b = replicas(url), replicas(url)
    wait_subscribed(port, model, 2)
    for round_ in range(40):
        name = f"race-{round_}"
        start = threading.Barrier(2)
        outcome: dict[str, str] = {}

        def save(replica: Replica, label: str, value: float, name: str = name, start: threading.Barrier = start,
                 outcome: dict[str, str] = outcome) -> None:
            start.wait()
            try:
                replica.registry.add(vector(value), {"name": name, "layer": "1"})
                outcome[label] = "saved"
            except Conflict:
                outcome[label] = "409"

        threads = [threading.Thread(target=save, args=(a, "a", 1.0)), threading.Thread(target=save, args=(b, "b", 2.0))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome.values()) == ["409", "saved"], outcome
        winner = 1.0 if outcome["a"] == "saved" else 2.0
        assert torch.equal(read_vector_file(a.registry.folder / f"{name}.safetensors").vector, vector(winner))
        for replica in (a, b):  # the loser holds the winner's vector at once, not a 404 until the notice comes
            assert torch.equal(replica.registry.get(name).vector, vector(winner))
    assert sorted(path.name for path in a.registry.folder.iterdir()) == sorted(
        f"race-{round_}.safetensors" for round_ in range(40)
    )


def test_a_replica_that_lost_redis_catches_up_when_it_subscribes_again(
    replicas: Callable[..., Replica], model: ModelIdentity
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_redis(port)
    try:
        a, b = replicas(url), replicas(url)  # no periodic rescan: only the resubscription can bring B up to date
        wait_subscribed(port, model, 2)
        a.registry.add(vector(1.0), {"name": "kept", "layer": "0"})
        a.registry.add(vector(2.0), {"name": "dropped", "layer": "0"})
        wait_until(lambda: b.names() == ["dropped", "kept"], PROPAGATION_S, "B holds both")
        b.changes.clear()

        server.kill()
        server.wait()
        a.registry.add(vector(3.0), {"name": "made-while-down", "layer": "3"})  # notices lost: Redis is gone
        a.registry.delete("dropped")
        server = start_redis(port)

        on_disk = sorted(path.name.removesuffix(".safetensors") for path in a.registry.folder.glob("*.safetensors"))
        assert on_disk == ["kept", "made-while-down"]
        wait_until(lambda: b.names() == on_disk, RECONNECT_S, "B rescans after subscribing again")
        assert torch.equal(b.registry.get("made-while-down").vector, vector(3.0))
        assert b.heard() == [("deleted", "dropped"), ("saved", "made-while-down")]  # each difference once, by name

        a.registry.add(vector(4.0), {"name": "after", "layer": "1"})  # A's publisher reconnected too
        wait_until(lambda: holds(b, "after"), PROPAGATION_S, "a notice after the restart")
    finally:
        server.kill()
        server.wait()


def test_a_file_for_another_model_is_refused_on_every_replica(
    replicas: Callable[..., Replica], redis_server: tuple[str, int], model: ModelIdentity
) -> None:
    url, port = redis_server
    b = replicas(url, resync_s=0.2)  # the periodic rescan finds files nobody announced
    wait_subscribed(port, model, 1)
    folder = b.registry.folder
    folder.mkdir(parents=True, exist_ok=True)
    base = {"format": "fvsteer/1", "model": "tiny", "model_fingerprint": "abc123", "d_model": "8", "layer": "1",
            "relation": "r", "method": "imported", "heads": "[]", "metrics": "{}", "created": "", "norm": "1"}
    save_file({"vector": vector(1.0)}, folder / "alien.safetensors",
              metadata={**base, "name": "alien", "model_fingerprint": "fff", "model": "other"})
    create_vector_file(folder / "native.safetensors", vector(2.0), {**base, "name": "native"})

    def refused() -> list[str]:
        return [Path(item.file).name for item in b.registry.refused]

    wait_until(lambda: holds(b, "native") and refused() == ["alien.safetensors"], PROPAGATION_S, "rescan")
    client = redis.Redis(port=port)
    for name, kind in (("alien", "saved"), ("native", "deleted")):  # a notice for the alien, then one to wait for
        if kind == "deleted":
            (folder / f"{name}.safetensors").unlink()
        client.publish(CHANNEL_PREFIX + model.slug, json.dumps(
            {"format": "fvsteer-registry/1", "topic": "vector", "kind": kind, "name": name, "origin": "elsewhere"}))
    client.close()
    wait_until(lambda: not holds(b, "native"), PROPAGATION_S, "the notice after the alien's")
    assert refused() == ["alien.safetensors"] and "fingerprint" in b.registry.refused[0].reason
    with pytest.raises(NotFound):
        b.registry.get("alien")
    assert b.heard() == [("saved", "native"), ("deleted", "native")]


def test_presets_follow_the_other_replica_and_no_change_is_lost(
    replicas: Callable[..., Replica], redis_server: tuple[str, int], model: ModelIdentity
) -> None:
    url, port = redis_server
    a, b = replicas(url), replicas(url)
    wait_subscribed(port, model, 2)
    a.registry.add(vector(1.0), {"name": "v", "layer": "1"})
    wait_until(lambda: holds(b, "v"), PROPAGATION_S, "B holds v")
    store_a, store_b = PresetStore(a.registry, 4, "tiny"), PresetStore(b.registry, 4, "tiny")
    spec = PresetSpec(relations={"v": 1.0})

    store_a.put("shared", spec)
    wait_until(lambda: [view.name for view in store_b.list()] == ["shared"], PROPAGATION_S, "B lists A's preset")
    store_a.delete("shared")
    wait_until(lambda: store_b.list() == [], PROPAGATION_S, "B drops it")
    with pytest.raises(NotFound):
        store_b.delete("shared")

    start = threading.Barrier(2)

    def put_many(store: PresetStore, prefix: str) -> None:
        start.wait()
        for index in range(10):
            store.put(f"{prefix}{index}", spec)

    threads = [threading.Thread(target=put_many, args=(store, prefix)) for store, prefix in
               ((store_a, "a"), (store_b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = sorted(f"{prefix}{index}" for prefix in "ab" for index in range(10))
    document = json.loads(store_a.path.read_text())
    assert sorted(preset["name"] for preset in document["presets"]) == every  # nothing overwritten

    def lists_every(store: PresetStore) -> Callable[[], bool]:
        return lambda: sorted(view.name for view in store.list()) == every

    for store in (store_a, store_b):
        wait_until(lists_every(store), PROPAGATION_S, "both replicas list every preset")


def test_without_redis_nothing_starts_and_the_folder_is_still_shared_safely(
    replicas: Callable[..., Replica],
) -> None:
    before = {thread.name for thread in threading.enumerate()}
    a, b = replicas(None), replicas(None)
    assert start_registry_sync(a.registry, Settings(redis_url=None)) is None
    assert {thread.name for thread in threading.enumerate()} - before == set()

    a.registry.add(vector(1.0), {"name": "x", "layer": "0"})
    with pytest.raises(Conflict):
        b.registry.add(vector(2.0), {"name": "x", "layer": "0"})  # on disk: taken, and B holds it now
    assert torch.equal(b.registry.get("x").vector, vector(1.0))
    b.registry.delete("x")
    with pytest.raises(NotFound):
        a.registry.delete("x")  # another process deleted it first
    assert a.heard() == [("saved", "x"), ("deleted", "x")] and b.heard() == [("saved", "x"), ("deleted", "x")]


def test_a_rescan_announces_each_difference_once_and_nothing_when_none(
    replicas: Callable[..., Replica],
) -> None:
    a, b = replicas(None), replicas(None)
    a.registry.add(vector(1.0), {"name": "x", "layer": "0"})
    a.registry.add(vector(2.0), {"name": "y", "layer": "1"})
    b.registry.rescan()
    b.registry.rescan()
    assert b.heard() == [("saved", "x"), ("saved", "y")]
    a.registry.delete("x")
    b.registry.rescan()
    b.registry.rescan()
    assert b.heard() == [("saved", "x"), ("saved", "y"), ("deleted", "x")]
    assert b.names() == a.names() == ["y"]


def test_readers_never_see_a_temporary_or_half_written_file(replicas: Callable[..., Replica]) -> None:
    writer = replicas(None)
    folder = writer.registry.folder
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def read_all() -> None:
        nonlocal reads
        while not done.is_set():
            for path in folder.glob("*.safetensors") if folder.is_dir() else []:
                try:
                    read_vector_file(path)
                    reads += 1
                except FileNotFoundError:
                    pass  # deleted between the listing and the read
                except Exception as exc:
                    problems.append(f"{path.name}: {exc}")

    reader = threading.Thread(target=read_all)
    reader.start()
    for index in range(60):
        writer.registry.add(torch.randn(8), {"name": f"v{index % 3}-{index}", "layer": "0"})
        if index >= 3:
            writer.registry.delete(f"v{(index - 3) % 3}-{index - 3}")
    done.set()
    reader.join()
    assert problems == [] and reads > 0
    assert not list(folder.glob("*.tmp"))


def test_a_link_whose_nfs_reply_was_lost_is_still_ours(tmp_path: Path) -> None:
    staging, final, other = tmp_path / "v.safetensors.x.tmp", tmp_path / "v.safetensors", tmp_path / "w"
    staging.write_bytes(b"mine")
    final.hardlink_to(staging)  # the first LINK went through; its reply was lost and the client sent it again
    _link_exclusively(str(staging), final)
    other.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        _link_exclusively(str(other), final)
