"""The ``vllm`` generation backend: rows are served by a vLLM server that runs fvsteer's plugin (``vllm_plugin/``).

Each row becomes one streamed ``POST /v1/completions`` (token ids in, text out). Its steering goes as weights over
bank keys (``vllm_xargs.fvsteer``): the plugin adds ``W_t @ B`` in-graph from the vectors it keeps resident, so
nothing is registered per composite. Steered rows carry a prefix-cache salt derived from their composite, their
positions policy and (for ``"fv"``) their prompt length, so that KV computed with a vector added is never reused by a
request with other steering (or none).

This side keeps what serving promises whatever the backend: at most ``max_batch`` rows at vLLM at once (the rest
wait here, in order; beyond ``max_queue`` they are refused with 429; past the queue-wait limit with 504), the
per-request deadline, cancellation (closing the stream makes vLLM abort the request), stats, and health: vLLM not
answering its health check ``FAILURES_TO_DIE`` times in a row, or its process exiting, is fatal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch
from fvsteer_vllm.spec import XARG, Entry, SteeringSpec
from fvsteer_vllm.state import failure_path

from app.engine.bank import VectorBank, compose
from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import (
    AppliedVector,
    BankSteering,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SteeringReceipt,
    settle,
)
from app.engine.stats import EngineStats, FinishRate
from app.errors import FvsteerError, GatewayTimeout, InvalidInput, NotFound, NotReady, QueueFull
from app.model.tokens import TokenLogprob
from app.registry.registry import RegistryChange

if TYPE_CHECKING:
    from app.registry.vector_file import StoredVector

log = logging.getLogger(__name__)

HEALTH_EVERY_S = 1.0
FAILURES_TO_DIE = 3
POLL_S = 0.05  # how often a streaming row looks at its cancel flag and deadline
FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "cancelled"}
_NOTHING = object()  # no chunk within POLL_S


@dataclass(frozen=True)
class _Keyed:
    """A registry vector as the plugin knows it; the values make the receipt's norms (no composite on a device)."""

    digest: str
    layer: int
    vector: torch.Tensor

    @classmethod
    def of(cls, stored: StoredVector) -> _Keyed:
        return cls(stored.meta.digest, stored.layer, stored.vector.detach().to("cpu", torch.float32))


@dataclass
class _Row:
    request: GenerationRequest
    steering_id: str | None = None  # the plugin's name for a steered row (where it reports a failure)
    receipt: SteeringReceipt | None = None  # made from the very keys the plugin is sent
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)


class VllmBackend:
    """Implements :class:`~app.engine.backend.GenerationBackend`; thread-safe like the hf engine (its own event loop
    runs in a thread)."""

    def __init__(self, url: str, served_model: str, name: str, prompts: PromptEncoder, bank: VectorBank, *,
                 max_batch: int, max_queue: int, queue_timeout_s: float | None,
                 is_alive: Callable[[], bool] = lambda: True,
                 on_fatal: Callable[[BaseException], None] | None = None, bank_dir: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.bank_dir = bank_dir  # the plugin's bank folder (the registry's, shared): where it reports failed rows
        self.served_model = served_model
        self._name = name
        self.prompts = prompts
        self.bank = bank
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.is_alive = is_alive
        self.on_fatal = on_fatal
        self.stats = EngineStats()
        self.fatal: BaseException | None = None
        self._finish_rate = FinishRate()
        self._keys: dict[str, _Keyed] = {}  # vector name → what the plugin looks it up by
        self._lock = threading.Lock()
        self._pending: deque[list[GenerationRequest]] = deque()  # groups submitted together stay together
        self._active: dict[asyncio.Task[None], GenerationRequest] = {}  # rows at vLLM (changed under _lock)
        self._expiry: asyncio.TimerHandle | None = None
        self._stopping = False
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fvsteer-vllm", daemon=True)
        self._client: httpx.AsyncClient | None = None
        self._watcher: concurrent.futures.Future[None] | None = None

    # ------------------------------------------------------------------ the seam
    @property
    def model_name(self) -> str:
        return self._name

    def start(self) -> None:
        self._thread.start()
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch_health(), self._loop)

    def wait_ready(self, timeout: float) -> None:
        """Block until vLLM answers its health check (or fail: it died, or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.5):
            if self.fatal is not None:
                raise RuntimeError(f"vLLM failed: {self.fatal}")
            if not self.is_alive():
                raise RuntimeError("the vLLM server exited while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM did not answer {self.url}/health within {timeout:g} s")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        self.cancel_all()
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        return self.prompts.encode(prompt, max_new_tokens)

    def check_steering(self, steering: BankSteering) -> None:
        self.bank.check(steering)

    def submit(self, rows: Sequence[GenerationRequest]) -> None:
        for row in rows:
            if row.steering is not None:
                self.check_steering(row.steering)
        group = list(rows)
        with self._lock:
            self._refuse_if_stopped()
            waiting = sum(len(g) for g in self._pending)
            if waiting + len(group) > self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"{waiting} requests are waiting; the queue limit is {self.max_queue}",
                                retry_after_s=self._finish_rate.retry_after(waiting))
            now = time.monotonic()
            for row in group:
                row.submitted = now
            self._pending.append(group)
            self.stats.queue_depth = waiting + len(group)
        self._loop.call_soon_threadsafe(self._admit)

    def cancel_all(self) -> None:
        with self._lock:
            rows = [row for group in self._pending for row in group] + list(self._active.values())
        for row in rows:
            row.cancel()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._admit)

    def requests_in_flight(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._pending) + len(self._active)

    def health(self) -> str | None:
        if self.fatal is not None:
            return f"the vLLM backend failed: {self.fatal}"
        return "the vLLM backend is shutting down" if self._stopping else None

    # ------------------------------------------------------------------ the registry
    def on_registry_change(self, change: RegistryChange) -> None:
        """Keep each vector's digest, layer and values: the plugin looks it up as ``<name>@<digest>``."""
        with self._lock:
            if change.kind == "saved" and change.stored is not None:
                self._keys[change.stored.name] = _Keyed.of(change.stored)
            elif change.kind == "deleted" and change.name is not None:
                self._keys.pop(change.name, None)
            elif change.kind == "reloaded":
                self._keys = {stored.name: _Keyed.of(stored) for stored in change.vectors}

    def spec(self, steering: BankSteering) -> tuple[SteeringSpec, SteeringReceipt]:
        """The plugin's steering and the receipt of it, both from one snapshot of the keys: the plugin applies
        exactly these digests or fails the row, so the receipt is what was applied."""
        entries = []
        parts = []
        with self._lock:
            for name, weight in steering.applied.items():
                if name not in self._keys:
                    raise NotFound(f"no vector named {name[:80]!r} for model {self._name}", param=f"relations.{name}")
                keyed = self._keys[name]
                layer = keyed.layer if steering.layer is None else steering.layer
                entries.append(Entry(f"{name}@{keyed.digest}", steering.scale * weight, layer))
                parts.append((layer, AppliedVector(name, keyed.digest, steering.scale * weight), keyed.vector))
        return SteeringSpec(tuple(entries), steering.positions), compose(parts, steering.positions).receipt

    # ------------------------------------------------------------------ on the loop
    @property
    def _running(self) -> list[GenerationRequest]:
        with self._lock:
            return list(self._active.values())

    def _refuse_if_stopped(self) -> None:
        if self.fatal is not None:
            raise NotReady(f"the vLLM backend failed and is stopping: {self.fatal}")
        if self._stopping:
            raise NotReady("the server is shutting down")

    def _admit(self) -> None:
        """Start waiting rows while there is room, oldest first; refuse those that waited too long."""
        now = time.monotonic()
        expired: list[tuple[GenerationRequest, GatewayTimeout]] = []
        with self._lock:
            while self._pending:
                group = self._pending[0]
                waited = now - group[0].submitted
                if self.queue_timeout_s is not None and waited > self.queue_timeout_s:
                    self._pending.popleft()
                    self.stats.queue_timeouts += len(group)
                    error = GatewayTimeout(f"waited {waited:.1f} s for a batch slot; the queue-wait limit is "
                                           f"{self.queue_timeout_s:g} s (FVSTEER_QUEUE_TIMEOUT_S)")
                    expired += [(row, error) for row in group]
                    continue
                if self._active and len(self._active) + len(group) > self.max_batch:
                    break
                for row in self._pending.popleft():
                    task = self._loop.create_task(self._serve(row))
                    self._active[task] = row
                    task.add_done_callback(self._done)
            self.stats.queue_depth = sum(len(g) for g in self._pending)
            self.stats.active_rows = len(self._active)
            oldest = self._pending[0][0].submitted if self._pending else None
        for row, error in expired:
            row.fail(error)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if oldest is not None and self.queue_timeout_s is not None:  # look again when the oldest expires
            self._expiry = self._loop.call_later(max(0.0, oldest + self.queue_timeout_s - now) + 0.01, self._admit)

    def _done(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._active.pop(task, None)
        self._admit()

    async def _serve(self, request: GenerationRequest) -> None:
        row = _Row(request)
        if request.cancelled:
            settle(request.admitted)
            self._finish(row, "cancelled")
            return
        try:
            body = self._body(request, row)
        except FvsteerError as exc:
            request.fail(exc)
            return
        settle(request.admitted)
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        reader = asyncio.ensure_future(self._read(body, chunks))
        reason: FinishReason | None = None
        try:
            while reason is None:
                try:
                    item = await asyncio.wait_for(chunks.get(), POLL_S)
                except TimeoutError:
                    item = _NOTHING
                if request.cancelled:
                    reason = "cancelled"
                elif request.deadline is not None and time.monotonic() >= request.deadline:
                    reason = "timeout"
                elif isinstance(item, BaseException):
                    raise item
                elif item is None:
                    raise NotReady("the vLLM stream ended without a finish reason")
                elif item is not _NOTHING:
                    reason = self._take(row, item)
        except FvsteerError as exc:
            request.fail(exc)
            return
        except Exception as exc:  # vLLM sent something this backend does not understand: fail the row, loudly
            log.exception("unexpected answer from vLLM")
            request.fail(NotReady(f"unexpected answer from the vLLM server: {exc!r}"))
            return
        finally:
            reader.cancel()  # closes the stream: vLLM aborts a request that is still running
        if (failure := self._steering_failure(row)) is not None:
            request.fail(NotReady(f"vLLM could not apply this request's steering: {failure}"))
            return
        self._finish(row, reason)

    def _steering_failure(self, row: _Row) -> str | None:
        """The plugin's report that it ended the row unsteered (its vector gone everywhere, or no bank row free)."""
        if row.steering_id is None or self.bank_dir is None:
            return None
        path = failure_path(self.bank_dir, row.steering_id)
        try:
            reason = path.read_text()
        except FileNotFoundError:
            return None
        path.unlink(missing_ok=True)
        self.stats.failed_rows += 1
        return reason

    def _take(self, row: _Row, chunk: dict[str, Any]) -> FinishReason | None:
        """One streamed chunk: new text and token ids; the finish reason on the last one."""
        if "error" in chunk:  # vLLM reports a failure inside the stream
            raise NotReady(f"the vLLM server failed the request: {chunk['error']}")
        (choice,) = chunk["choices"]
        piece = choice.get("text") or ""
        ids = choice.get("token_ids") or []
        row.tokens.extend(ids)
        if row.request.params.logprobs is not None and choice.get("logprobs"):
            row.logprobs += _logprobs(choice["logprobs"], row.request.params.logprobs)
        self.stats.tokens_generated += len(ids)
        if piece:
            row.text += piece
            if row.request.on_text is not None:
                row.request.on_text(piece)
        finish = choice.get("finish_reason")
        return FINISH.get(finish, "stop") if finish is not None else None

    def _finish(self, row: _Row, reason: FinishReason) -> None:
        self.stats.finished[reason] += 1
        self._finish_rate.finished(time.monotonic())
        asked = row.request.params.logprobs is not None
        result = GenerationResult(row.text, row.tokens, reason, len(row.request.prompt_ids), (), row.receipt,
                                  tuple(row.logprobs) if asked else None)
        settle(row.request.future, result)

    def _body(self, request: GenerationRequest, row: _Row) -> dict[str, Any]:
        params = request.params
        body: dict[str, Any] = {
            "model": self.served_model, "prompt": request.prompt_ids, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "stream": True, "return_token_ids": True,
            "skip_special_tokens": True,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs is not None:  # vLLM's are the model's own (raw_logprobs), as on the hf backend
            body["logprobs"] = params.logprobs
            body["return_tokens_as_token_ids"] = True
        if request.steering is None:
            return body
        spec, row.receipt = self.spec(request.steering)
        if spec.entries:  # all weights zero: nothing to add, as on the hf backend
            row.steering_id = uuid.uuid4().hex
            body["vllm_xargs"] = {XARG: dataclasses.replace(spec, request_id=row.steering_id).dumps()}
            body["cache_salt"] = cache_salt(spec, len(request.prompt_ids))
        return body

    async def _read(self, body: dict[str, Any], out: asyncio.Queue[Any]) -> None:
        """Stream one completion from vLLM into ``out``; closing (cancelling this) makes vLLM abort it."""
        assert self._client is not None
        try:
            async with self._client.stream("POST", f"{self.url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    await out.put(_refusal(response))
                    return
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        await out.put(json.loads(line[6:]))
        except httpx.HTTPError as exc:
            await out.put(NotReady(f"the vLLM server is not answering: {exc}"))
        await out.put(None)

    async def _watch_health(self) -> None:
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                         limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        failures = 0
        while not self._stopping:
            healthy = False
            if self.is_alive():
                try:
                    healthy = (await self._client.get(f"{self.url}/health", timeout=5.0)).status_code == 200
                except httpx.HTTPError:
                    healthy = False
            if healthy and not self._ready.is_set():
                try:
                    await self._check_model()
                except (httpx.HTTPError, ValueError, KeyError, TypeError):
                    healthy = False  # not answering properly yet
                except RuntimeError as exc:
                    self._die(exc)
                    return
            if healthy:
                failures = 0
                self._ready.set()
            elif not self.is_alive() or self._ready.is_set():
                failures += 1
                if failures >= FAILURES_TO_DIE or not self.is_alive():
                    self._die(RuntimeError(f"the vLLM server at {self.url} stopped answering"
                                           if self.is_alive() else "the vLLM server process exited"))
                    return
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _check_model(self) -> None:
        """Use the model vLLM serves: ours by name, or the only one it serves (a server someone else started)."""
        assert self._client is not None
        served = [entry["id"] for entry in (await self._client.get(f"{self.url}/v1/models", timeout=10)).json()["data"]]
        if self.served_model in served:
            return
        if len(served) != 1:
            raise RuntimeError(f"vLLM at {self.url} serves {served}, not {self.served_model!r}")
        log.info("vLLM at %s serves %r; using it for %s", self.url, served[0], self._name)
        self.served_model = served[0]

    def _die(self, exc: BaseException) -> None:
        log.critical("vLLM backend stopped after a fatal error: %s", exc)
        with self._lock:
            self.fatal = exc
            pending = [row for group in self._pending for row in group]
            self._pending.clear()
        error = NotReady(f"the vLLM backend failed: {exc}")
        for row in pending + self._running:
            row.fail(error)
        for task in list(self._active):
            task.cancel()
        if self.on_fatal is not None:
            self.on_fatal(exc)

    async def _close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._active):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()


def cache_salt(spec: SteeringSpec, prompt_len: int) -> str:
    """Prefix-cache salt of a steered row: equal only for rows whose KV is steered identically at every position
    (the same composite and positions policy, and with ``"fv"`` the same last prompt position)."""
    basis = spec.steering().dumps() + (f"|{prompt_len}" if spec.positions == "fv" else "")
    return "fv-" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def _token_id(token: str) -> int:
    return int(token.removeprefix("token_id:"))


def _logprobs(block: dict[str, Any], k: int) -> list[TokenLogprob]:
    """vLLM's completion logprobs (tokens as ``token_id:N``; each position's map holds the sampled token and the k
    likeliest) as one :class:`TokenLogprob` per token."""
    out = []
    for token, logprob, top in zip(block["tokens"], block["token_logprobs"], block["top_logprobs"], strict=True):
        best = sorted(((_token_id(t), lp) for t, lp in (top or {}).items()), key=lambda item: -item[1])[:k]
        out.append(TokenLogprob(_token_id(token), float(logprob), tuple(best)))
    return out


def _refusal(response: httpx.Response) -> FvsteerError:
    """vLLM's 4xx as fvsteer's error: a vector the bank lacks is 404, anything else 422 (5xx: 503)."""
    try:
        message = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = response.text[:500]
    if response.status_code >= 500:
        return NotReady(f"the vLLM server failed the request: {message}")
    if "no vector" in message:
        return NotFound(message, param="relations")
    return InvalidInput(f"vLLM refused the request: {message}", param=None)
