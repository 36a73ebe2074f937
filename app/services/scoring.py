"""Log-probabilities of given text under the steered model: ``POST /score`` (a prompt and candidate continuations)
and the prompt log-probabilities of ``echo`` on ``/v1/completions``.

Scoring is a forward over known tokens, not generation: like the analogy scores it runs on the HF model (the
science seam, :mod:`app.model.runner`) whichever backend generates. It goes in slices of a few hundred tokens, each
one engine task: the engine's time share interleaves them with decoding, and when the client leaves (or its
deadline passes) the work stops at the next slice. The composite
comes from the same resident bank the hf backend steers with, so a score and a generation see the same vector.

Where the vector goes (the FV policy, as in generation): ``"fv"`` — at the prompt's last token and at every
continuation token (exactly what generating that continuation would add); ``"all"`` — at every token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

from app.engine.bank import VectorBank
from app.engine.prompt_encoder import PromptEncoder
from app.engine.requests import BankSteering
from app.errors import GatewayTimeout, InvalidInput
from app.model.logprobs import next_token_logprobs, sequence_logprobs
from app.model.runner import ModelRunner, Runner, offload
from app.model.tokens import TokenLogprob
from app.services.inputs import ScoreInput
from app.services.results import ContinuationScore, ScoredToken, ScoreResponse, ScoreUsage, Steering

R = TypeVar("R")


class ScoringService:
    def __init__(self, runner: ModelRunner, bank: VectorBank, prompts: PromptEncoder,
                 timeout_s: float | None = None) -> None:
        self.runner = runner
        self.bank = bank
        self.prompts = prompts
        self.timeout_s = timeout_s  # FVSTEER_REQUEST_TIMEOUT_S: past it the work stops and the request gets 504

    async def _offload(self, work: Callable[[Runner[Any]], R]) -> R:
        try:
            return await asyncio.wait_for(offload(self.runner, work), self.timeout_s)
        except TimeoutError:
            raise GatewayTimeout(f"scoring took longer than {self.timeout_s:g} s (FVSTEER_REQUEST_TIMEOUT_S); it "
                                 "was stopped") from None

    def _composite(self, steering: BankSteering | None) -> tuple[dict[int, Tensor] | None, Steering | None]:
        """The composite per layer (None: unsteered) and how the response reports it; refuses unknown vectors."""
        if steering is None:
            return None, None
        resolved = self.bank.resolve(steering)
        return resolved.layers or None, Steering.of(steering, resolved.receipt)

    async def score(self, spec: ScoreInput) -> ScoreResponse:
        """``log p(continuation | prompt)`` of each continuation, with the FV policy applied as in generation."""
        asked = BankSteering.checked(spec.relations, scale=spec.scale, layer=spec.layer, positions=spec.positions)
        self.bank.check(asked)
        vectors, report = self._composite(asked if spec.relations else None)
        prompt = self.prompts.encode(spec.prompt, 0)
        rows = []
        for index, continuation in enumerate(spec.continuations):
            ids = self.prompts.tokenize(continuation)
            if not ids:
                raise InvalidInput(f"continuation {index} encodes to no tokens", param=f"continuations.{index}")
            rows.append(self.prompts.check_ids(prompt + ids, 0, param=f"continuations.{index}"))
        start = 0 if spec.positions == "all" else len(prompt) - 1

        def work(run: Runner[Any]) -> list[list[TokenLogprob]]:  # one engine task per slice of the forward
            return sequence_logprobs(self.runner.handle.adapter, rows, [start] * len(rows), vectors, top_k=1, run=run)

        scored = await self._offload(work)
        scores = []
        for continuation, row_scores in zip(spec.continuations, scored, strict=True):
            tail = row_scores[len(prompt) - 1 :]
            tokens = [ScoredToken(token=self.prompts.token_text(t.token_id), id=t.token_id, logprob=t.logprob)
                      for t in tail]
            scores.append(ContinuationScore(
                continuation=continuation, logprob=sum(t.logprob for t in tail), tokens=tokens,
                greedy=all(t.top[0][0] == t.token_id for t in tail),
            ))
        best = max(range(len(scores)), key=lambda i: scores[i].logprob)
        usage = ScoreUsage(prompt_tokens=len(prompt), continuation_tokens=sum(len(s.tokens) for s in scores))
        return ScoreResponse(model=self.runner.handle.name, scores=scores, best=best, steering=report, usage=usage)

    async def prompt_logprobs(self, ids: list[int], steering: BankSteering | None, top_k: int) -> list[TokenLogprob]:
        """Log-probability of each token of ``ids`` after the first (``echo``). Steered ``"fv"``: each token scored
        as the first token steered generation would produce after the tokens before it (the vector at the position
        just before it); ``"all"``: the vector at every position; unsteered: plain."""
        vectors, _ = self._composite(steering)
        adapter = self.runner.handle.adapter

        def work(run: Runner[Any]) -> list[TokenLogprob]:  # one engine task per slice, as for /score
            if vectors is None:
                return sequence_logprobs(adapter, [ids], [len(ids)], None, top_k, run=run)[0]
            if steering is not None and steering.positions == "all":
                return sequence_logprobs(adapter, [ids], [0], vectors, top_k, run=run)[0]
            return next_token_logprobs(adapter, ids, vectors, top_k, run=run)

        return await self._offload(work)

