"""``POST /complete``: a prompt (or a conversation) with steering, and optionally its unsteered baseline, as rows on
the one generation path; the response's steering is the receipt of the backend that applied it. No torch here.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Literal

from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams
from app.services.generation import GenerationService, RowEvent
from app.services.results import Baseline, CompleteResponse, Steering, TextPiece, Usage


@dataclass(frozen=True)
class ChatLine:
    """One turn of a conversation given instead of a prompt."""

    role: str
    content: str


@dataclass(frozen=True)
class CompletionInput:
    prompt: str
    messages: tuple[ChatLine, ...] | None = None
    relations: dict[str, float] = field(default_factory=dict)
    layer: int | None = None
    scale: float = 1.0
    positions: Literal["fv", "all"] = "fv"
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    return_baseline: bool = False


_ids = itertools.count()
Event = tuple[str, TextPiece | CompleteResponse]  # (server-sent event name, its data)
ROW_EVENTS = ("token", "baseline")  # the steered row's pieces, the baseline's


@dataclass
class _Prepared:
    spec: CompletionInput
    steering: BankSteering | None
    rows: list[GenerationRequest]


class CompletionService:
    """``POST /complete``'s wire format over the one generation path (:mod:`app.services.generation`)."""

    def __init__(self, generation: GenerationService, prompts: PromptEncoder) -> None:
        self.generation = generation
        self.prompts = prompts  # renders a conversation given instead of a prompt

    def _prepare(self, spec: CompletionInput) -> _Prepared:
        """Everything that can refuse the request, done before anything is queued (or a stream is opened)."""
        self.generation.check_tokens(spec.max_new_tokens, "max_new_tokens")
        steering = self.generation.steering(spec.relations, scale=spec.scale, layer=spec.layer,
                                            positions=spec.positions)
        prompt_ids = self._prompt_ids(spec)
        params = SamplingParams(spec.max_new_tokens, spec.temperature, spec.top_p, spec.seed, spec.stop)
        asked = [(prompt_ids, params, steering)] + ([(prompt_ids, params, None)] if spec.return_baseline else [])
        return _Prepared(spec, steering, self.generation.rows(asked))

    def _prompt_ids(self, spec: CompletionInput) -> list[int]:
        if spec.messages is None:
            return self.generation.encode(spec.prompt, spec.max_new_tokens)
        text = self.prompts.render_chat([{"role": turn.role, "content": turn.content} for turn in spec.messages])
        # The template wrote the special tokens itself: encode as inside a sequence, as /v1/chat/completions does.
        return self.prompts.check_ids(self.prompts.tokenize(text), spec.max_new_tokens, param="messages")

    async def complete(self, spec: CompletionInput) -> CompleteResponse:
        """Run one completion request."""
        prepared = self._prepare(spec)
        return self._response(prepared, await self.generation.run(prepared.rows))

    async def stream(self, spec: CompletionInput) -> AsyncIterator[Event]:
        """Validate, queue and wait for a batch slot (errors raise here, before any event), then return the stream:
        ``("token", {"text"})`` per new piece of text (``"baseline"`` for the baseline's), then
        ``("done", <the POST /complete response>)``."""
        prepared = self._prepare(spec)
        events = await self.generation.open_stream(prepared.rows)
        return self._events(prepared, events)

    async def _events(self, prepared: _Prepared, events: AsyncGenerator[RowEvent]) -> AsyncIterator[Event]:
        results: dict[int, GenerationResult] = {}
        async with aclosing(events):  # the client went away: the rows still running are cancelled
            async for index, item in events:
                if isinstance(item, str):
                    yield ROW_EVENTS[index], TextPiece(text=item)
                else:
                    results[index] = item
        yield "done", self._response(prepared, [results[index] for index in range(len(prepared.rows))])

    def _response(self, prepared: _Prepared, results: list[GenerationResult]) -> CompleteResponse:
        result = results[0]
        steering = None if prepared.steering is None else Steering.of(prepared.steering, result.receipt)
        baseline = None
        if prepared.spec.return_baseline:
            baseline = Baseline(text=results[1].text, finish_reason=results[1].finish_reason)
        return CompleteResponse(
            id=f"cmpl-{secrets.token_hex(6)}{next(_ids)}", model=self.generation.model_name, text=result.text,
            finish_reason=result.finish_reason, steering=steering, baseline=baseline,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        )
