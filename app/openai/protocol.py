"""The OpenAI-compatible wire format: request and response bodies of ``/v1/completions``, ``/v1/chat/completions``
and ``/v1/models``, plus fvsteer's one extension field, ``steering``.

Requests refuse unknown fields (a field fvsteer does not know could change what the client expects). OpenAI fields
fvsteer does not implement are declared here so that their harmless values (a zero penalty, ``best_of`` equal to
``n``, an empty ``logit_bias``) pass and any other value is refused by name (:func:`refuse_unsupported`), never
silently ignored. Harmless bookkeeping fields (``user``, ``metadata``, ``store``, ``service_tier``) are accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.requests import MAX_ABS_WEIGHT, MAX_RELATIONS, MAX_TOP_LOGPROBS
from app.errors import InvalidInput
from app.services.results import Steering

MAX_PROMPTS = 32
MAX_N = 16
MAX_STOP = 8
MAX_MESSAGES = 256
MAX_TEXT_CHARS = 100_000

Weight = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_WEIGHT, le=MAX_ABS_WEIGHT)]
StopString = Annotated[str, Field(min_length=1, max_length=64)]
TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=100_000)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # JSON types exactly: no "1" for 1, no false for 0.0


class SteeringField(Strict):
    """fvsteer's extension (the ``openai`` SDK sends it with ``extra_body={"steering": {...}}``)."""

    relations: dict[str, Weight] = Field(max_length=MAX_RELATIONS, description="Vector name → weight.")
    scale: float = Field(1.0, allow_inf_nan=False, ge=-100.0, le=100.0, description="Multiplies the composite.")
    layer: int | None = Field(None, ge=0, description="Put every vector at this layer instead of its own.")
    positions: Literal["fv", "all"] = Field(
        "fv", description="'fv': the last prompt token and every generated token; 'all': every prompt token too."
    )


class StreamOptions(Strict):
    include_usage: bool = Field(False, description="Send a last chunk with the usage and no choices.")


class Sampling(Strict):
    """Fields both endpoints share."""

    model: str = Field(min_length=1, max_length=512, description="The base model, a preset, or '<base>+<vector>' "
                       "(GET /v1/models lists them).")
    temperature: float = Field(1.0, allow_inf_nan=False, ge=0.0, le=5.0, description="0 = greedy.")
    top_p: float = Field(1.0, allow_inf_nan=False, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="Choices per prompt (with a seed, choice i samples with seed + i).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1 - MAX_N)
    stop: StopString | list[StopString] | None = Field(None, description="Stop strings (at most 8; not returned).")
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: SteeringField | None = Field(None, description="fvsteer: steer with these vectors (not with a preset).")
    # Accepted only with values that change nothing (refuse_unsupported):
    presence_penalty: float = Field(0.0, allow_inf_nan=False, description="Only 0 (not implemented).")
    frequency_penalty: float = Field(0.0, allow_inf_nan=False, description="Only 0 (not implemented).")
    logit_bias: dict[str, float] | None = Field(None, description="Only empty (not implemented).")
    # Bookkeeping, accepted and ignored:
    user: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = Field(None, max_length=32)

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise InvalidInput(f"stop has {len(stops)} strings; the limit is {MAX_STOP}", param="stop")
        return tuple(stops)

    def refuse_unsupported(self) -> None:
        """Refuse, by name, an OpenAI option whose value would change the result and that fvsteer does not do."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise InvalidInput(f"{name} is not supported; leave it at 0", param=name)
        if self.logit_bias:
            raise InvalidInput("logit_bias is not supported; leave it empty", param="logit_bias")
        if self.store:
            raise InvalidInput("store is not supported: fvsteer keeps no completions", param="store")


class CompletionRequest(Sampling):
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="A string, a list of strings, a list of token ids, or a list of token-id lists."
    )
    max_tokens: int = Field(16, ge=0, description="Tokens to generate at most; 0 only with echo (scoring).")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="Log-probability of each token and of the k likeliest at each position.")
    echo: bool = Field(False, description="Return the prompt before the completion (with its log-probabilities).")
    best_of: int | None = Field(None, ge=1, description="Only equal to n (not implemented otherwise).")
    suffix: str | None = Field(None, description="Not supported (insertion).")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidInput("best_of is not supported; leave it out or equal to n", param="best_of")
        if self.suffix:
            raise InvalidInput("suffix is not supported", param="suffix")
        if self.max_tokens == 0 and not self.echo:
            raise InvalidInput("max_tokens 0 generates nothing; it is allowed only with echo", param="max_tokens")

    def prompts(self) -> list[str | list[int]]:
        """The prompts, each a string or a list of token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and isinstance(prompt[0], int):
            return [prompt]
        prompts: list[Any] = list(prompt)
        if len(prompts) > MAX_PROMPTS:
            raise InvalidInput(f"prompt has {len(prompts)} prompts; the limit is {MAX_PROMPTS}", param="prompt")
        if not prompts:
            raise InvalidInput("prompt is empty", param="prompt")
        return prompts


class TextPart(Strict):
    type: Literal["text"]
    text: str = Field(max_length=MAX_TEXT_CHARS)


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[TextPart] = Field(
        description="Text, or a list of text parts (joined)."
    )
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ResponseFormat(Strict):
    type: Literal["text"] = Field(description="Only 'text' (structured output is not supported).")


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated name of max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most "
                                              "(default: the server's limit).")
    logprobs: bool = Field(False, description="Return the log-probability of each generated token.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="With logprobs: the k likeliest tokens at each position.")
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidInput("top_logprobs needs logprobs: true", param="top_logprobs")
        if self.max_tokens is not None and self.max_completion_tokens is not None \
                and self.max_tokens != self.max_completion_tokens:
            raise InvalidInput("give max_completion_tokens or max_tokens, not two different values",
                               param="max_completion_tokens")

    def conversation(self) -> list[dict[str, str]]:
        """The messages as the chat template takes them (``developer`` is the newer name of ``system``)."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


# ---------------------------------------------------------------------------------------------------- responses
class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = Field(description="'stop', 'length', or fvsteer's 'timeout' / 'cancelled'.")


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    steering: Steering | None = Field(None, description="fvsteer: what was added (absent: unsteered).")


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    steering: Steering | None = Field(None, description="fvsteer: what was added (absent: unsteered).")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None
    steering: Steering | None = Field(None, description="fvsteer: on a choice's last chunk, what was added to that "
                                      "choice (absent: unsteered).")


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None
    steering: Steering | None = Field(None, description="fvsteer: on a choice's last chunk, what was added to that "
                                      "choice (absent: unsteered).")


class PresetSteering(BaseModel):
    relations: dict[str, float]
    scale: float
    layer: int | None
    positions: Literal["fv", "all"]
    status: Literal["ok", "broken"] = Field(description="'broken': a vector it names is gone; it is not served.")
    missing: list[str] = Field(description="The vectors it names that the registry no longer holds.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "fvsteer"
    root: str = Field(description="The base model every steered model runs on.")
    parent: str | None = Field(description="The base model, for a steered model; null for the base model itself.")
    kind: Literal["base", "preset", "vector"] = Field(description="fvsteer: how the id steers.")
    steering: PresetSteering | None = Field(description="fvsteer: what the id adds (null for the base model).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
