"""One registry for every process that shares its folder (API replicas, job workers) and one Redis.

Each change a process makes (a vector or a preset saved or deleted) is published on the channel
``fvsteer:registry:<model-slug>`` as JSON: ``{"format": "fvsteer-registry/1", "topic": "vector" | "preset",
"kind": "saved" | "deleted", "name": …, "origin": "<host>:<pid>:<random>"}``. Every process subscribes and, for a
notice from another, reads that one file again (:meth:`VectorRegistry.refresh`) or ``presets.json``. The folder is
the truth and a notice only says where to look, so a notice duplicated, reordered or outdated does no harm.

Pub/sub delivers only while subscribed and at most once, so a process also rescans the folder
(:meth:`VectorRegistry.rescan`) each time its subscription is confirmed (at start, after any reconnection) and every
``FVSTEER_REGISTRY_RESYNC_S`` as a safety net. Redis down stops nothing: changes go to disk as always, notices that
cannot be sent are dropped with a warning (the others find the change when they rescan), and the subscriber
reconnects. Without ``FVSTEER_REDIS_URL`` none of this runs: one process, as before.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from app.errors import InvalidInput
from app.registry.names import check_name
from app.registry.registry import Notice, VectorRegistry
from app.settings import Settings

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "fvsteer:registry:"
FORMAT = "fvsteer-registry/1"
SOCKET_TIMEOUT_S = 2.0
TICK_S = 0.25  # how soon the subscriber notices stop() and a rescan that is due
PING_S = 5.0  # an idle subscription is pinged this often …
SILENCE_S = 15.0  # … and given up for dead (a cut network) when nothing came back for this long
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 1.0


class RegistrySync:
    """Two threads for one registry: a publisher (this process's notices, in order, so that no change waits on
    Redis) and a subscriber (the others' notices, rescans, reconnection)."""

    def __init__(self, registry: VectorRegistry, redis_url: str, resync_s: float = 30.0) -> None:
        self.registry = registry
        self.channel = CHANNEL_PREFIX + registry.model.slug
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.resync_s = resync_s
        self._publisher = _client(redis_url, retries=1)  # one retry: a connection Redis dropped since the last notice
        self._subscriber = _client(redis_url, retries=0)  # this class reconnects, and rescans when it has
        self._outbox: queue.SimpleQueue[Notice | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._publish, name="fvsteer-registry-publish", daemon=True),
                         threading.Thread(target=self._listen, name="fvsteer-registry-listen", daemon=True)]
        self._next_rescan = time.monotonic() + resync_s
        self._reconnect_s = RECONNECT_FIRST_S
        self._lost = False

    @property
    def degraded(self) -> bool:
        """Redis lost: the other processes' changes arrive only by the folder rescan (``/readyz`` says so)."""
        return self._lost

    def start(self) -> None:
        self.registry.tell_peers(self._outbox.put)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        for thread in self._threads:
            thread.join(timeout=2 * SOCKET_TIMEOUT_S + TICK_S)
        self._publisher.close()
        self._subscriber.close()

    # ------------------------------------------------------------------ publishing
    def _publish(self) -> None:
        while (notice := self._outbox.get()) is not None:
            message = json.dumps({"format": FORMAT, "topic": notice.topic, "kind": notice.kind, "name": notice.name,
                                  "origin": self.origin})
            try:
                self._publisher.publish(self.channel, message)
            except (redis.RedisError, OSError) as exc:
                log.warning("registry sync: %s %s %s not announced to the other processes (Redis: %s); they will "
                            "find it when they rescan the folder", notice.topic, notice.name, notice.kind, exc)

    # ------------------------------------------------------------------ subscribing
    def _listen(self) -> None:
        """Follow the channel for as long as the process runs, subscribing again after any Redis failure."""
        while not self._stop.is_set():
            try:
                with self._subscriber.pubsub() as pubsub:  # type: ignore[no-untyped-call]
                    pubsub.subscribe(self.channel)
                    self._follow(pubsub)
            except (redis.RedisError, OSError) as exc:
                if not self._lost:
                    log.warning("registry sync: Redis subscription lost (%s); reconnecting, and rescanning the folder "
                                "every %g s meanwhile", exc, self.resync_s)
                self._lost = True
            if not self._stop.wait(self._reconnect_s):
                self._rescan_if_due()
            self._reconnect_s = min(2 * self._reconnect_s, RECONNECT_MAX_S)

    def _follow(self, pubsub: PubSub) -> None:
        """Handle messages until stop(), a Redis error, or silence (a cut network raises nothing by itself)."""
        heard = pinged = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=TICK_S)
            now = time.monotonic()
            if message is not None:
                heard = now
                self._handle(message)
            elif now - heard > SILENCE_S:
                raise redis.ConnectionError(f"no answer from Redis for {SILENCE_S:g} s")
            if now - pinged >= PING_S:
                pubsub.ping()
                pinged = now
            self._rescan_if_due()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            self._subscribed()
        elif message["type"] == "message":
            self._receive(message["data"])

    def _subscribed(self) -> None:
        """Subscribed (again): whatever was published while this process was not listening is found by a rescan."""
        if self._lost:
            log.info("registry sync: subscribed to %s again; rescanning the folder", self.channel)
        self._lost = False
        self._reconnect_s = RECONNECT_FIRST_S
        self._rescan()

    def _receive(self, data: bytes) -> None:
        try:
            notice, origin = parse_notice(data)
        except (ValueError, InvalidInput) as exc:
            log.warning("registry sync: ignored a message on %s: %s", self.channel, exc)
            return
        if origin == self.origin:
            return
        try:
            if notice.topic == "vector":
                self.registry.refresh(notice.name)
            else:
                self.registry.presets_changed()
        except Exception:
            log.exception("registry sync: could not apply %s from %s; the next rescan tries again", notice, origin)

    def _rescan_if_due(self) -> None:
        if time.monotonic() >= self._next_rescan:
            self._rescan()

    def _rescan(self) -> None:
        self._next_rescan = time.monotonic() + self.resync_s
        try:
            self.registry.rescan()
        except Exception:
            log.exception("registry sync: rescanning %s failed; the next rescan tries again", self.registry.folder)


def parse_notice(data: bytes) -> tuple[Notice, str]:
    """A notice and the process it came from; ValueError (or InvalidInput for a bad name) says what is wrong."""
    body = json.loads(data)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} message")
    topic, kind, name, origin = (body.get(key) for key in ("topic", "kind", "name", "origin"))
    if topic not in ("vector", "preset") or kind not in ("saved", "deleted") or not isinstance(origin, str):
        raise ValueError(f"topic {topic!r}, kind {kind!r} or origin {origin!r} is not one this process knows")
    return Notice(topic, kind, check_name(str(name))), origin


def start_registry_sync(registry: VectorRegistry, settings: Settings) -> RegistrySync | None:
    """The sync of a process sharing its registry folder with others, when Redis is configured; None (one process,
    as before) when it is not."""
    if not settings.redis_url:
        return None
    sync = RegistrySync(registry, settings.redis_url, settings.registry_resync_s)
    sync.start()
    return sync


def _client(url: str, retries: int) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
                                retry=Retry(NoBackoff(), retries))
