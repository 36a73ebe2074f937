"""Serving ``/v1/completions`` and ``/v1/chat/completions``: an OpenAI request becomes rows on the generation
backend (one per prompt and choice), their results become OpenAI's response or stream of chunks.

Steering comes from the ``model`` (a preset or ``<base>+<vector>``, :mod:`app.openai.model_ids`) or from the
``steering`` extension field — never both — and goes to the backend as bank weights like ``POST /complete``'s, so a
completion here is the completion ``/complete`` gives for the same prompt, steering and sampling. ``echo``'s prompt
log-probabilities are scored on the HF model (:mod:`app.services.scoring`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering, GenerationRequest, GenerationResult, SamplingParams
from app.errors import InvalidInput
from app.model.tokens import TokenLogprob
from app.openai.model_ids import ModelIds
from app.openai.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Delta,
    Sampling,
    TopLogprob,
    UsageInfo,
)
from app.services.generation import GenerationService, RowEvent
from app.services.results import Steering
from app.services.scoring import ScoringService

MAX_ROWS = 64  # prompts × n of one request


@dataclass
class _Batch:
    """One request's rows (``rows[i]`` is choice ``i``), the prompts they continue, and what steers them."""

    prompts: list[list[int]]
    prompt_texts: list[str]
    rows: list[GenerationRequest]
    steering: BankSteering | None
    n: int


class OpenAIServing:
    """OpenAI's wire formats over the one generation path (:mod:`app.services.generation`)."""

    def __init__(self, generation: GenerationService, scoring: ScoringService, models: ModelIds,
                 prompts: PromptEncoder) -> None:
        self.generation = generation
        self.scoring = scoring
        self.models = models
        self.prompts = prompts

    # ------------------------------------------------------------------ shared
    def _steering(self, request: Sampling) -> BankSteering | None:
        """The model's steering or the request's ``steering`` field (refused together: which would win is unclear)."""
        choice = self.models.resolve(request.model)
        asked = request.steering
        if asked is not None and choice.steering is not None:
            raise InvalidInput(f"model {request.model!r} already steers ({choice.kind}); give steering with the base "
                               f"model {self.models.base!r}", param="steering")
        if asked is not None:
            return self.generation.steering(asked.relations, scale=asked.scale, layer=asked.layer,
                                            positions=asked.positions)
        if choice.steering is None:
            return None
        return self.generation.steering(choice.steering.weights, scale=choice.steering.scale,
                                        layer=choice.steering.layer, positions=choice.steering.positions)

    def _max_tokens(self, asked: int | None, default: int) -> int:
        return self.generation.check_tokens(default if asked is None else asked, "max_tokens")

    def _batch(self, request: Sampling, prompts: list[list[int]], texts: list[str], max_tokens: int,
               logprobs: int | None, steering: BankSteering | None) -> _Batch:
        if len(prompts) * request.n > MAX_ROWS:
            raise InvalidInput(f"{len(prompts)} prompts × n {request.n} = {len(prompts) * request.n} choices; the "
                               f"limit is {MAX_ROWS}", param="n")
        stop = request.stop_strings()
        asked = []
        if max_tokens > 0:
            for ids in prompts:
                for j in range(request.n):
                    seed = None if request.seed is None else request.seed + j
                    asked.append((ids, SamplingParams(max_tokens, request.temperature, request.top_p, seed, stop,
                                                      logprobs), steering))
        return _Batch(prompts, texts, self.generation.rows(asked), steering, request.n)

    async def _run(self, batch: _Batch) -> list[GenerationResult | None]:
        """Each choice's result (None: nothing generated, ``max_tokens`` 0)."""
        if not batch.rows:
            return [None] * (len(batch.prompts) * batch.n)
        return list(await self.generation.run(batch.rows))

    def _steering_report(self, steering: BankSteering | None,
                         results: Sequence[GenerationResult | None]) -> Steering | None:
        if steering is None:
            return None
        receipt = next((r.receipt for r in results if r is not None and r.receipt is not None), None)
        return Steering.of(steering, receipt)

    def _logprob_entry(self, item: TokenLogprob) -> tuple[str, dict[str, float]]:
        top = {self.prompts.token_text(token): logprob for token, logprob in item.top}
        token = self.prompts.token_text(item.token_id)
        top.setdefault(token, item.logprob)  # OpenAI's map holds the chosen token too
        return token, top

    # ------------------------------------------------------------------ /v1/completions
    def _completion_batch(self, request: CompletionRequest) -> _Batch:
        request.refuse_unsupported()
        steering = self._steering(request)
        max_tokens = self._max_tokens(request.max_tokens, 16)
        prompts, texts = [], []
        for index, prompt in enumerate(request.prompts()):
            param = "prompt" if index == 0 else f"prompt.{index}"
            if isinstance(prompt, str):
                prompts.append(self.prompts.encode(prompt, max_tokens))
                texts.append(prompt)
            else:
                ids = self.prompts.check_ids(prompt, max_tokens, param=param)
                prompts.append(ids)
                texts.append(self.prompts.text_of(ids))
        return self._batch(request, prompts, texts, max_tokens, request.logprobs, steering)

    async def _echo_logprobs(self, request: CompletionRequest, batch: _Batch) -> list[list[TokenLogprob]] | None:
        if not (request.echo and request.logprobs is not None):
            return None
        return [await self.scoring.prompt_logprobs(ids, batch.steering, request.logprobs) for ids in batch.prompts]

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        batch = self._completion_batch(request)
        echoed = await self._echo_logprobs(request, batch)
        results = await self._run(batch)
        choices = [self._completion_choice(request, batch, echoed, i, result) for i, result in enumerate(results)]
        return CompletionResponse(id=_id("cmpl"), created=int(time.time()), model=request.model, choices=choices,
                                  usage=_usage(batch, results), steering=self._steering_report(batch.steering, results))

    def _completion_choice(self, request: CompletionRequest, batch: _Batch, echoed: list[list[TokenLogprob]] | None,
                           index: int, result: GenerationResult | None) -> CompletionChoice:
        prompt = index // batch.n
        text = result.text if result is not None else ""
        prefix = batch.prompt_texts[prompt] if request.echo else ""
        logprobs = None
        if request.logprobs is not None:
            logprobs = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
            if echoed is not None:
                first = batch.prompts[prompt][0]
                self._append(logprobs, TokenLogprob(first, 0.0), known=False)
                for item in echoed[prompt]:
                    self._append(logprobs, item)
            for item in (result.logprobs or ()) if result is not None else ():
                self._append(logprobs, item)
        return CompletionChoice(index=index, text=prefix + text, logprobs=logprobs,
                                finish_reason=result.finish_reason if result is not None else "length")

    def _append(self, block: CompletionLogprobs, item: TokenLogprob, known: bool = True) -> None:
        token, top = self._logprob_entry(item)
        offset = block.text_offset[-1] + len(block.tokens[-1]) if block.tokens else 0
        block.tokens.append(token)
        block.token_logprobs.append(item.logprob if known else None)
        block.top_logprobs.append(top if known else None)
        block.text_offset.append(offset)

    async def completion_stream(self, request: CompletionRequest) -> AsyncIterator[str]:
        batch = self._completion_batch(request)
        echoed = await self._echo_logprobs(request, batch)
        events = await self.generation.open_stream(batch.rows) if batch.rows else _nothing()
        return self._completion_chunks(request, batch, echoed, events)

    async def _completion_chunks(self, request: CompletionRequest, batch: _Batch,
                                 echoed: list[list[TokenLogprob]] | None,
                                 events: AsyncGenerator[RowEvent]) -> AsyncIterator[str]:
        stream_id, created = _id("cmpl"), int(time.time())

        def chunk(choices: list[CompletionChoice], usage: UsageInfo | None = None,
                  steering: Steering | None = None) -> str:
            body = CompletionChunk(id=stream_id, created=created, model=request.model, choices=choices, usage=usage,
                                   steering=steering)
            return _sse(body.model_dump_json(exclude_none=usage is None))

        results: list[GenerationResult | None] = [None] * (len(batch.prompts) * batch.n)
        if request.echo:
            for index in range(len(results)):
                yield chunk([CompletionChoice(index=index, text=batch.prompt_texts[index // batch.n],
                                              finish_reason=None)])
        if not batch.rows:
            for index in range(len(results)):
                yield chunk([self._completion_choice(request, batch, echoed, index, None).model_copy(
                    update={"text": ""})])
        async with aclosing(events):  # the client went away: the choices still running are cancelled
            async for index, item in events:
                if isinstance(item, str):
                    yield chunk([CompletionChoice(index=index, text=item, finish_reason=None)])
                    continue
                results[index] = item
                final = self._completion_choice(request, batch, echoed, index, item)
                # the text came in pieces; the logprobs and the receipt come here
                yield chunk([final.model_copy(update={"text": ""})],
                            steering=self._steering_report(batch.steering, [item]))
        if request.stream_options is not None and request.stream_options.include_usage:
            yield chunk([], _usage(batch, results))
        yield "data: [DONE]\n\n"

    # ------------------------------------------------------------------ /v1/chat/completions
    def _chat_batch(self, request: ChatCompletionRequest) -> _Batch:
        request.refuse_unsupported()
        steering = self._steering(request)
        max_tokens = self._max_tokens(request.max_completion_tokens or request.max_tokens,
                                      self.generation.max_new_tokens)
        text = self.prompts.render_chat(request.conversation())
        ids = self.prompts.check_ids(self.prompts.tokenize(text), max_tokens, param="messages")
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        return self._batch(request, [ids], [text], max_tokens, logprobs, steering)

    def _chat_logprobs(self, request: ChatCompletionRequest, items: Sequence[TokenLogprob]) -> ChatLogprobs | None:
        if not request.logprobs:
            return None
        content = []
        for item in items:
            token = self.prompts.token_text(item.token_id)
            top = [TopLogprob(token=self.prompts.token_text(t), logprob=lp, bytes=list(self.prompts.token_text(t)
                                                                                       .encode()))
                   for t, lp in item.top]
            content.append(ChatTokenLogprob(token=token, logprob=item.logprob, bytes=list(token.encode()),
                                            top_logprobs=top))
        return ChatLogprobs(content=content)

    async def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        batch = self._chat_batch(request)
        results = await self._run(batch)
        choices = []
        for index, result in enumerate(results):
            assert result is not None  # chat always generates (max tokens ≥ 1)
            choices.append(ChatChoice(index=index, message=AssistantMessage(content=result.text),
                                      logprobs=self._chat_logprobs(request, result.logprobs or ()),
                                      finish_reason=result.finish_reason))
        return ChatCompletionResponse(id=_id("chatcmpl"), created=int(time.time()), model=request.model,
                                      choices=choices, usage=_usage(batch, results),
                                      steering=self._steering_report(batch.steering, results))

    async def chat_stream(self, request: ChatCompletionRequest) -> AsyncIterator[str]:
        batch = self._chat_batch(request)
        events = await self.generation.open_stream(batch.rows)
        return self._chat_chunks(request, batch, events)

    async def _chat_chunks(self, request: ChatCompletionRequest, batch: _Batch,
                           events: AsyncGenerator[RowEvent]) -> AsyncIterator[str]:
        stream_id, created = _id("chatcmpl"), int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: UsageInfo | None = None,
                  steering: Steering | None = None) -> str:
            body = ChatCompletionChunk(id=stream_id, created=created, model=request.model, choices=choices,
                                       usage=usage, steering=steering)
            return _sse(body.model_dump_json(exclude_none=usage is None))

        results: list[GenerationResult | None] = [None] * len(batch.rows)
        for index in range(len(batch.rows)):
            yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async with aclosing(events):  # the client went away: the choices still running are cancelled
            async for index, item in events:
                if isinstance(item, str):
                    yield chunk([ChatChunkChoice(index=index, delta=Delta(content=item))])
                    continue
                results[index] = item
                yield chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=item.finish_reason,
                                             logprobs=self._chat_logprobs(request, item.logprobs or ()))],
                            steering=self._steering_report(batch.steering, [item]))
        if request.stream_options is not None and request.stream_options.include_usage:
            yield chunk([], _usage(batch, results))
        yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------------- helpers
def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _usage(batch: _Batch, results: Sequence[GenerationResult | None]) -> UsageInfo:
    prompt = sum(len(ids) for ids in batch.prompts)
    completion = sum(r.completion_tokens for r in results if r is not None)
    return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _nothing() -> AsyncGenerator[RowEvent]:
    return
    yield  # an async generator that yields nothing
