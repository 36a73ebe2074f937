"""The ``hf`` generation backend: one thread owns the HF model and decodes every live request together.

New requests are prefilled as a group and joined to the running batch between decode steps
(continuous batching); finished rows leave at once. Each row keeps its own composite (built from the resident
vector bank when it joins), sampling generator, stop strings and deadline, so what a request gets never depends
on what else shares its batch. The same thread runs the science's forwards between decode steps
(:meth:`Engine.call`): the engine is also the HF model runner of the science seam.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor
from transformers import DynamicCache

from app.engine.bank import VectorBank
from app.engine.kv_batch import concat_batches, select_rows
from app.engine.prompt_encoder import PromptEncoder, model_context
from app.engine.requests import (
    BankSteering,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    SteeringReceipt,
    settle,
)
from app.engine.sampling import make_generator, next_token
from app.engine.stats import EngineStats, FinishRate
from app.errors import FvsteerError, GatewayTimeout, NotReady, QueueFull
from app.model.handle import ModelHandle
from app.model.loading import LoadedModel
from app.model.logprobs import picked_logprobs
from app.model.steering import BatchSteering, stack_row_vectors, steered
from app.model.tokens import TokenLogprob

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Row:
    request: GenerationRequest
    generator: torch.Generator | None
    length: int
    steering: dict[int, Tensor] | None = None  # layer → this row's composite
    receipt: SteeringReceipt | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    batch_sizes: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    streamed: str = ""  # text already handed to ``request.on_text``
    error: Exception | None = None  # this row alone failed (sampling, log-probabilities, stop handling, streaming)


DECODE_SHARE = 2.0  # decoding gets this many times the engine time of the last task before the next one
# Errors after which the device cannot be trusted (a CUDA context is poisoned by these): the engine stops for good,
# so that a supervisor restarts the process, instead of failing every later request one by one.
FATAL_MARKERS = ("CUDA error", "device-side assert", "illegal memory access", "NCCL error")


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or any(marker in str(exc) for marker in FATAL_MARKERS)


class Engine:
    """Owns the model; :meth:`submit` is thread-safe and returns at once, results arrive on futures.

    Implements both seams: :class:`~app.engine.backend.GenerationBackend` (submit, cancel, drain, stats, health)
    and :class:`~app.model.runner.ModelRunner` (``handle`` and ``call``)."""

    def __init__(
        self,
        loaded: LoadedModel,
        handle: ModelHandle,
        bank: VectorBank,
        *,
        max_batch: int,
        max_queue: int,
        max_prompt_tokens: int,
        queue_timeout_s: float | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.loaded = loaded
        self._handle = handle
        self.adapter = adapter = handle.adapter
        self.bank = bank
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.queue_timeout_s = queue_timeout_s
        self.on_fatal = on_fatal
        self.fatal: BaseException | None = None
        self._finish_rate = FinishRate()  # the Retry-After estimate
        self._last_task_s = 0.0  # how long the last job task held the engine …
        self._decoded_since_task = 0.0  # … and how long decoding has had it since (the time share)
        self.stats = EngineStats()
        self.prompts = PromptEncoder(loaded.tokenizer, max_prompt_tokens, model_context(adapter.model.config))
        self._cond = threading.Condition()
        self._pending: deque[GenerationRequest] = deque()
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._rows: list[_Row] = []
        self._admitting: list[GenerationRequest] = []  # taken from the queue, prefill not done yet
        self._cache: DynamicCache | None = None
        self._mask: Tensor | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._eos = self._eos_ids()

    # ----------------------------------------------------------------- public API
    @property
    def handle(self) -> ModelHandle:
        return self._handle

    @property
    def model_name(self) -> str:
        return self._handle.name

    def health(self) -> str | None:
        """Why the engine cannot serve (a fatal device error, or stopping), or None while it can."""
        if self.fatal is not None:
            return f"the engine failed: {self.fatal}"
        return "the engine is shutting down" if self._stopping else None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fvsteer-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        """Tokenize a prompt, refusing one over the prompt limit or the model's context."""
        return self.prompts.encode(prompt, max_new_tokens)

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Queue requests together (they are admitted in the same step, e.g. a steered row and its baseline)."""
        for request in requests:
            if request.steering is not None:
                self.check_steering(request.steering)
        with self._cond:
            self._refuse_if_stopped()
            if len(self._pending) + len(requests) > self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(f"{len(self._pending)} requests are waiting; the queue limit is {self.max_queue}",
                                retry_after_s=self._finish_rate.retry_after(len(self._pending)))
            now = time.monotonic()
            for request in requests:
                request.submitted = now
            self._pending.extend(requests)
            self.stats.queue_depth = len(self._pending)
            self._cond.notify_all()

    def _refuse_if_stopped(self) -> None:
        if self.fatal is not None:
            raise NotReady(f"the engine failed and is stopping: {self.fatal}")
        if self._stopping:
            raise NotReady("the engine is shutting down")

    def cancel_all(self) -> None:
        """End every row at the next step (``finish_reason: "cancelled"``, with the text so far) and refuse what
        waits: a shutdown whose grace period is over."""
        with self._cond:
            for request in [row.request for row in self._rows] + self._admitting + list(self._pending):
                request.cancel()
            self._cond.notify_all()

    def requests_in_flight(self) -> int:
        """Generation rows running, being admitted or waiting (job tasks not counted: jobs stop on their own)."""
        with self._cond:
            return len(self._pending) + len(self._admitting) + len(self._rows)

    def check_steering(self, steering: BankSteering) -> None:
        """Refuse steering the bank cannot build before the row is queued (unknown vector, a layer the model lacks)."""
        self.bank.check(steering)

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._iterate():
                    pass
        except BaseException as exc:  # the loop itself broke, or the device did: stop for good
            self._die(exc)

    def _iterate(self) -> bool:
        """One turn of the loop: expire rows that waited too long, run one task, admit, decode one step."""
        with self._cond:
            while not self._pending and not self._rows and not self._tasks and not self._stopping:
                self._cond.wait()
            if self._stopping and not self._rows and not self._pending and not self._tasks:
                return False
            self._expire_waiting(time.monotonic())
            room = self.max_batch - len(self._rows)
            admitted = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            self._admitting = admitted  # neither pending nor rows until the prefill: _die must still see them
            self.stats.queue_depth = len(self._pending)
            task = self._tasks.popleft() if self._tasks and self._task_due() else None
        if task is not None:
            started = time.monotonic()
            self._run_task(*task)
            self.stats.tasks_run += 1
            self._last_task_s = time.monotonic() - started
            self._decoded_since_task = 0.0
        try:
            admitted = [req for req in admitted if not self._drop_if_cancelled(req)]
            started = time.monotonic()
            if admitted:
                admitted = self._prefill(admitted)
            self._admitting = []
            if self._rows:
                self._decode_step()
            self._decoded_since_task += time.monotonic() - started
        except Exception as exc:  # a failed forward fails its rows, never the server
            if is_fatal(exc):
                raise
            # Admitted requests may already be rows: fail each request once, and count it once.
            failed = {id(req): req for req in [row.request for row in self._rows] + admitted}
            log.exception("engine step failed; failing %d rows", len(failed))
            self.stats.failed_steps += 1
            for req in failed.values():
                req.fail(exc)
            self._rows, self._cache, self._mask, self._admitting = [], None, None, []
        self.stats.active_rows = len(self._rows)
        return True

    def _task_due(self) -> bool:
        """Time share: while rows are decoding, a task (a job's forward, a slice of scoring) runs only once decoding
        has had ``DECODE_SHARE`` times the engine time the last task took, so tasks get at most a third of the
        engine and a completion beside them runs at two thirds of its speed or better."""
        return not self._rows or self._decoded_since_task >= DECODE_SHARE * self._last_task_s

    def _expire_waiting(self, now: float) -> None:
        """Refuse queued rows that waited longer than the queue-wait limit (504): better than a late answer."""
        if self.queue_timeout_s is None or not self._pending:
            return
        limit = self.queue_timeout_s
        # The queue is in submission order: the oldest are at its head, so this looks at one row per step.
        while self._pending and now - self._pending[0].submitted > limit:
            req = self._pending.popleft()
            self.stats.queue_timeouts += 1
            req.fail(GatewayTimeout(f"waited {now - req.submitted:.1f} s for a batch slot; the queue-wait limit "
                                      f"is {limit:g} s (FVSTEER_QUEUE_TIMEOUT_S)"))

    def _die(self, exc: BaseException) -> None:
        """Fail everything in flight, refuse new work, and tell the owner (who exits so a supervisor restarts)."""
        log.critical("engine stopped after a fatal error: %s", exc, exc_info=exc)
        with self._cond:
            self.fatal = exc
            requests = [row.request for row in self._rows] + self._admitting + list(self._pending)
            tasks = list(self._tasks)
            self._rows, self._pending, self._tasks, self._admitting = [], deque(), deque(), []
            self._cache = self._mask = None
        error = NotReady(f"the engine failed: {exc}")
        for req in requests:
            req.fail(error)
        for _, future in tasks:
            settle(future, error=error)
        self.stats.active_rows = self.stats.queue_depth = 0
        if self.on_fatal is not None:
            self.on_fatal(exc)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn`` on the engine thread between decode steps and return its result.

        Jobs (extraction, fine-tuning, evaluation) send each model forward through here, so they share the one
        model with live completions without a lock; while completions are decoding, tasks get at most a third of the
        engine's time (:meth:`_task_due`).
        """
        if threading.current_thread() is self._thread:
            return fn()
        future: Future[T] = Future()
        with self._cond:
            self._refuse_if_stopped()
            self._tasks.append((fn, future))
            self._cond.notify_all()
        return future.result(timeout)

    @staticmethod
    def _run_task(fn: Callable[[], Any], future: Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller; fatal to the engine only if the device is broken
            future.set_exception(exc)
            if is_fatal(exc):
                raise

    def _drop_if_cancelled(self, request: GenerationRequest) -> bool:
        if request.cancelled:
            self.stats.finished["cancelled"] += 1
            settle(request.admitted)
            settle(request.future, GenerationResult("", [], "cancelled", len(request.prompt_ids), ()))
        return request.cancelled

    def _resolve(self, requests: list[GenerationRequest]) -> list[tuple[GenerationRequest, _Row]]:
        """Each request's row with its composite built from the bank now; a request whose vector was deleted since
        it was queued fails alone (never unsteered)."""
        rows = []
        for req in requests:
            row = _Row(req, None if req.params.temperature <= 0 else make_generator(req.params.seed),
                       len(req.prompt_ids))
            if req.steering is not None:
                try:
                    resolved = self.bank.resolve(req.steering)
                except FvsteerError as exc:
                    req.fail(exc)
                    continue
                row.steering, row.receipt = resolved.layers or None, resolved.receipt
            rows.append((req, row))
        return rows

    def _prefill(self, admitted: list[GenerationRequest]) -> list[GenerationRequest]:
        """Prefill the admitted requests as one batch and join them to the running one; returns those admitted."""
        resolved = self._resolve(admitted)
        if not resolved:
            return []
        requests = [req for req, _ in resolved]
        new_rows = [row for _, row in resolved]
        device = self.loaded.device
        width = max(len(req.prompt_ids) for req in requests)
        pad = int(self.loaded.tokenizer.pad_token_id or 0)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for index, req in enumerate(requests):
            ids[index, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            mask[index, width - len(req.prompt_ids) :] = 1
        positions = torch.zeros((len(requests), width), dtype=torch.bool)
        positions[:, -1] = True
        for index, req in enumerate(requests):
            if req.steering is not None and req.steering.positions == "all":
                positions[index] = mask[index].bool()
        steering = self._steering([row.steering for row in new_rows], positions.to(device))
        cache = DynamicCache()
        logits = self._forward(ids.to(device), mask.to(device), cache, steering)
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask.to(device)
        else:
            self._cache, self._mask = concat_batches(self._cache, self._mask, cache, mask.to(device))
        self._rows.extend(new_rows)
        for req in requests:
            settle(req.admitted)
        self._advance(new_rows, logits, len(requests))
        return requests

    def _decode_step(self) -> None:
        assert self._cache is not None and self._mask is not None
        device = self.loaded.device
        ids = torch.tensor([[row.tokens[-1]] for row in self._rows], dtype=torch.long, device=device)
        self._mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=device)], 1)
        positions = torch.ones((len(self._rows), 1), dtype=torch.bool, device=device)
        steering = self._steering([row.steering for row in self._rows], positions)
        position_ids = torch.tensor([[row.length] for row in self._rows], dtype=torch.long, device=device)
        logits = self._forward(ids, self._mask, self._cache, steering, position_ids)
        for row in self._rows:
            row.length += 1
        self._advance(self._rows, logits, len(self._rows))

    def _steering(self, rows: list[dict[int, Tensor] | None], positions: Tensor) -> BatchSteering | None:
        vectors = stack_row_vectors(rows, self.adapter.d_model, torch.float32, self.loaded.device)
        return BatchSteering(vectors, positions) if vectors else None

    def _forward(
        self,
        ids: Tensor,
        mask: Tensor,
        cache: DynamicCache,
        steering: BatchSteering | None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        if position_ids is None:
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with steered(self.adapter, steering):
            out = self.adapter.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: Tensor = out.logits[:, -1, :]
        return logits

    def _advance(self, rows: list[_Row], logits: Tensor, batch_size: int) -> None:
        """Append one sampled token to each of ``rows`` (whose logits are the last ``len(rows)`` of the batch)."""
        self.stats.batch_sizes[batch_size] += 1
        offset = logits.shape[0] - len(rows)
        now = time.monotonic()
        for index, row in enumerate(rows):
            try:
                self._advance_row(row, logits[offset + index], batch_size, now)
            except Exception as exc:  # one row's own step: it fails alone, the batch goes on
                if is_fatal(exc):
                    raise
                log.exception("a row failed; %d others of its batch go on", batch_size - 1)
                row.error = exc
        self._retire()

    def _advance_row(self, row: _Row, logits: Tensor, batch_size: int, now: float) -> None:
        params = row.request.params
        token = next_token(logits, params.temperature, params.top_p, row.generator)
        row.tokens.append(token)
        if params.logprobs is not None:
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            row.logprobs += picked_logprobs(log_probs[None], [token], params.logprobs)
        row.batch_sizes.append(batch_size)
        self.stats.tokens_generated += 1
        row.finish = self._finish_reason(row, token, now)
        if row.request.on_text is not None:
            self._stream(row)

    @staticmethod
    def _stream(row: _Row) -> None:
        """Hand the streaming callback the text that can no longer change: while the row runs, a trailing partial
        character and any tail that could still grow into a stop string are held back; at the end, all of it."""
        assert row.request.on_text is not None
        text = row.text
        if row.finish is None:
            text = text.rstrip("\ufffd")
            held = max((n for stop in row.request.params.stop for n in range(len(stop) - 1, 0, -1)
                        if text.endswith(stop[:n])), default=0)
            text = text[: len(text) - held]
        if len(text) > len(row.streamed) and text.startswith(row.streamed):
            row.request.on_text(text[len(row.streamed) :])
            row.streamed = text

    def _finish_reason(self, row: _Row, token: int, now: float) -> FinishReason | None:
        request = row.request
        if request.cancelled:
            return "cancelled"
        if token in self._eos:
            row.text = self._decode(row.tokens[:-1])
            return "stop"
        row.text = self._decode(row.tokens)
        cut = min((i for i in (row.text.find(s) for s in request.params.stop) if i >= 0), default=-1)
        if cut >= 0:
            row.text = row.text[:cut]
            return "stop"
        if len(row.tokens) >= request.params.max_new_tokens:
            return "length"
        if request.deadline is not None and now >= request.deadline:
            return "timeout"
        return None

    def _retire(self) -> None:
        keep = [i for i, row in enumerate(self._rows) if row.finish is None and row.error is None]
        if len(keep) == len(self._rows):
            return
        now = time.monotonic()
        for row in self._rows:
            if row.error is not None:
                self.stats.failed_rows += 1
                row.request.fail(row.error)
            elif row.finish is not None:
                asked = row.request.params.logprobs is not None
                result = GenerationResult(
                    row.text, row.tokens, row.finish, len(row.request.prompt_ids), tuple(row.batch_sizes), row.receipt,
                    tuple(row.logprobs) if asked else None,
                )
                self.stats.finished[row.finish] += 1
                self._finish_rate.finished(now)
                settle(row.request.future, result)
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        assert self._cache is not None and self._mask is not None
        self._cache, self._mask = select_rows(self._cache, self._mask, keep)
        self._rows = [self._rows[i] for i in keep]

    def _decode(self, tokens: list[int]) -> str:
        return self.prompts.decode(tokens)

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        generation_eos = getattr(self.adapter.model.generation_config, "eos_token_id", None)
        for source in (self.loaded.tokenizer.eos_token_id, generation_eos):
            if isinstance(source, int):
                ids.add(source)
            elif isinstance(source, list):
                ids.update(int(i) for i in source)
        return ids
