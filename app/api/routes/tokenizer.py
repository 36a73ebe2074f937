"""``/tokenize``, ``/detokenize``, ``/tokenizer_info``: the model's tokenizer over HTTP, in vLLM's shape, so that
clients that count or build tokens themselves (lm-evaluation-harness's ``tokenizer_backend=remote``) need nothing
but the server's URL."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.api.errors import ERROR_RESPONSES
from app.api.routes.deps import services
from app.api.schemas import MAX_PROMPT_CHARS, Strict
from app.runtime import Services

router = APIRouter(tags=["tokenizer"])


class TokenizeRequest(Strict):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    add_special_tokens: bool = Field(True, description="Add what the tokenizer adds to a whole prompt (e.g. BOS).")


class Tokens(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int | None = Field(description="The model's context in tokens, where its config says.")


class DetokenizeRequest(Strict):
    tokens: list[int] = Field(max_length=100_000)


class Detokenized(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None
    chat_template: str | None
    model_max_length: int | None


@router.post("/tokenize", response_model=Tokens, responses=ERROR_RESPONSES)
def tokenize(body: TokenizeRequest, svc: Services = Depends(services)) -> Tokens:
    """Token ids of a text, without the server's prompt limit."""
    prompts = svc.openai.prompts
    ids = prompts.tokenize(body.prompt, add_special_tokens=body.add_special_tokens)
    return Tokens(tokens=ids, count=len(ids), max_model_len=prompts.context)


@router.post("/detokenize", response_model=Detokenized, responses=ERROR_RESPONSES)
def detokenize(body: DetokenizeRequest, svc: Services = Depends(services)) -> Detokenized:
    """The text of token ids (special tokens included); ids outside the vocabulary are refused (422)."""
    prompts = svc.openai.prompts
    if body.tokens:
        prompts.check_ids(body.tokens, 0, param="tokens", limit=False)
    return Detokenized(prompt=prompts.text_of(body.tokens))


@router.get("/tokenizer_info", response_model=TokenizerInfo, responses=ERROR_RESPONSES)
def tokenizer_info(svc: Services = Depends(services)) -> TokenizerInfo:
    """The tokenizer's special tokens and chat template."""
    tokenizer = svc.openai.prompts.tokenizer
    template = getattr(tokenizer, "chat_template", None)
    return TokenizerInfo(
        tokenizer_class=type(tokenizer).__name__, eos_token=tokenizer.eos_token, bos_token=tokenizer.bos_token,
        pad_token=tokenizer.pad_token, chat_template=template if isinstance(template, str) else None,
        model_max_length=svc.openai.prompts.context,
    )
