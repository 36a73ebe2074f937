"""Every API operation, described once as a ``_Call``: method, path, body, and how to parse the answer.

``Client`` and ``AsyncClient`` only differ in how they send a ``_Call``, so the two can never drift apart on
what a route takes or returns. Nothing here does I/O except ``pairs=`` files and uploads being read, which is
why ``AsyncClient`` builds those calls in a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote

from pydantic import TypeAdapter, ValidationError

from fvsteer_client.errors import APIResponseValidationError
from fvsteer_client.models import (
    AdminVectorListing,
    Analogy,
    Completion,
    DecodedVector,
    DeletedVector,
    Evaluation,
    Health,
    Job,
    Preset,
    PresetListing,
    Readiness,
    Score,
    VectorInfo,
    VectorMetadata,
    VectorSummary,
)
from fvsteer_client.options import (
    CompletionOptions,
    EvaluateOptions,
    ExtractOptions,
    FinetuneOptions,
    JobRef,
    VectorSource,
)
from fvsteer_client.pairs import normalize_pairs

T = TypeVar("T")

EVENT_STREAM = "text/event-stream"

_COMPLETION_FIELDS = frozenset(CompletionOptions.__optional_keys__)
_EXTRACT_FIELDS = frozenset(ExtractOptions.__optional_keys__)
_FINETUNE_FIELDS = frozenset(FinetuneOptions.__optional_keys__)
_EVALUATE_FIELDS = frozenset(EvaluateOptions.__optional_keys__)
_VECTOR_LIST = TypeAdapter(list[VectorSummary])
# How an option's Python value becomes its JSON value; options not listed are sent as they are.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "stop": lambda value: [value] if isinstance(value, str) else list(value),
    "relations": dict,
    "messages": lambda turns: [dict(turn) for turn in turns],
    "pairs": normalize_pairs,  # may read a file: AsyncClient builds these calls in a worker thread
}


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One HTTP exchange: what to send and how to turn the decoded JSON answer into a model."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    params: dict[str, Any] | None = None
    accept: str | None = None
    admin: bool = False
    raw: bool = False  # the answer is a file: ``parse`` gets its bytes, not decoded JSON


def _segment(value: str) -> str:
    """Quote a path segment so a name can never reach another route (``../admin``)."""
    return quote(value, safe="")


def _job_id(job: JobRef) -> str:
    return job.id if isinstance(job, Job) else job


def _body(method: str, allowed: frozenset[str], options: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
    """The server rejects unknown fields and applies its own defaults, so send only what the caller set."""
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"{method}() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    body = dict(fixed)
    for key, value in options.items():
        if value is not None:
            body[key] = _CONVERTERS[key](value) if key in _CONVERTERS else value
    return body


def _complete_call(prompt: str | None, options: Mapping[str, Any], stream: bool = False) -> _Call[Completion]:
    """With ``stream``, ``parse`` applies to the ``done`` event's data (``_CompletionStream``); a conversation in
    ``options["messages"]`` goes instead of the prompt (the server refuses both or neither, naming ``prompt``)."""
    body = _body("complete", _COMPLETION_FIELDS, options, **({} if prompt is None else {"prompt": prompt}))
    if stream:
        body["stream"] = True
        return _Call("POST", "/complete", Completion.model_validate, json=body, accept=EVENT_STREAM)
    return _Call("POST", "/complete", Completion.model_validate, json=body)


def _score_call(prompt: str, continuations: str | Sequence[str], relations: Mapping[str, float] | None,
                scale: float, layer: int | None, positions: Literal["fv", "all"]) -> _Call[Score]:
    """A single string is one continuation (not a sequence of one-character ones)."""
    texts = [continuations] if isinstance(continuations, str) else list(continuations)
    body: dict[str, Any] = {"prompt": prompt, "continuations": texts, "scale": scale, "positions": positions}
    if relations is not None:
        body["relations"] = dict(relations)
    if layer is not None:
        body["layer"] = layer
    return _Call("POST", "/score", Score.model_validate, json=body)


def _list_vectors_call() -> _Call[list[VectorSummary]]:
    return _Call("GET", "/vectors", lambda body: _VECTOR_LIST.validate_python(body["vectors"]))


def _get_vector_call(name: str) -> _Call[VectorInfo]:
    return _Call("GET", f"/vectors/{_segment(name)}", VectorInfo.model_validate)


def _export_call(name: str, format: Literal["gguf", "safetensors"]) -> _Call[bytes]:
    return _Call("GET", f"/vectors/{_segment(name)}/export", bytes, params={"format": format}, raw=True)


def _extract_call(name: str, options: Mapping[str, Any]) -> _Call[Job]:
    body = _body("extract", _EXTRACT_FIELDS, options, name=name)
    return _Call("POST", "/vectors/extract", Job.model_validate, json=body)


def _finetune_call(name: str, options: Mapping[str, Any]) -> _Call[Job]:
    body = _body("finetune", _FINETUNE_FIELDS, options, name=name)
    return _Call("POST", "/vectors/finetune", Job.model_validate, json=body)


def _contrast_call(name: str, pairs: Sequence[tuple[str, str]], layer: int, method: str, normalize: str,
                   template: str | None, relation: str | None) -> _Call[Job]:
    body: dict[str, Any] = {"name": name, "pairs": [{"positive": pos, "negative": neg} for pos, neg in pairs],
                            "layer": layer, "method": method, "normalize": normalize}
    if template is not None:
        body["template"] = template
    if relation is not None:
        body["relation"] = relation
    return _Call("POST", "/vectors/contrast", Job.model_validate, json=body)


def _evaluate_call(name: str, options: Mapping[str, Any]) -> _Call[Evaluation]:
    body = _body("evaluate", _EVALUATE_FIELDS, options)
    return _Call("POST", f"/vectors/{_segment(name)}/evaluate", Evaluation.model_validate, json=body)


def _analogy_call(a: str, b: str, c: str, choices: Sequence[str] | None, max_new_tokens: int | None) -> _Call[Analogy]:
    body: dict[str, Any] = {"a": a, "b": b, "c": c}
    if choices is not None:
        body["choices"] = list(choices)
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    return _Call("POST", "/analogies", Analogy.model_validate, json=body)


def _decode_call(name: str, k: int) -> _Call[DecodedVector]:
    return _Call("GET", f"/vectors/{_segment(name)}/decode", DecodedVector.model_validate, params={"k": int(k)})


def _get_job_call(job: JobRef) -> _Call[Job]:
    return _Call("GET", f"/jobs/{_segment(_job_id(job))}", Job.model_validate)


def _cancel_job_call(job: JobRef) -> _Call[Job]:
    return _Call("DELETE", f"/jobs/{_segment(_job_id(job))}", Job.model_validate)


def _job_events_call(job: JobRef) -> _Call[Job]:
    """``parse`` applies to each event's data, not to the (streamed) body as a whole."""
    return _Call("GET", f"/jobs/{_segment(_job_id(job))}/events", Job.model_validate, accept=EVENT_STREAM)


def _health_call() -> _Call[Health]:
    return _Call("GET", "/healthz", Health.model_validate)


def _ready_call() -> _Call[Readiness]:
    return _Call("GET", "/readyz", Readiness.model_validate)


def _admin_list_call() -> _Call[AdminVectorListing]:
    return _Call("GET", "/admin/vectors", AdminVectorListing.model_validate, admin=True)


def _upload_call(source: VectorSource, name: str, layer: int | None, relation: str | None
                 ) -> _Call[VectorMetadata]:
    """Read the file up front: uploads are small (one [d_model] tensor) and a bytes body can be retried."""
    if isinstance(source, bytes):
        filename, content = f"{name}.{'gguf' if source[:4] == b'GGUF' else 'safetensors'}", source
    else:
        path = Path(source)
        filename, content = path.name, path.read_bytes()
    data = {"name": name}
    if layer is not None:
        data["layer"] = str(int(layer))
    if relation is not None:
        data["relation"] = relation
    files = {"file": (filename, content, "application/octet-stream")}
    return _Call("POST", "/admin/vectors", VectorMetadata.model_validate, data=data, files=files, admin=True)


def _delete_call(name: str) -> _Call[DeletedVector]:
    return _Call("DELETE", f"/admin/vectors/{_segment(name)}", DeletedVector.model_validate, admin=True)


def _list_presets_call() -> _Call[list[Preset]]:
    return _Call("GET", "/admin/presets", lambda body: PresetListing.model_validate(body).presets, admin=True)


def _put_preset_call(name: str, relations: Mapping[str, float], scale: float, layer: int | None,
                     positions: Literal["fv", "all"], description: str | None) -> _Call[Preset]:
    """A PUT replaces the whole preset: what is not given here takes the server's default, not the old value."""
    body: dict[str, Any] = {"relations": dict(relations), "scale": scale, "positions": positions}
    if layer is not None:
        body["layer"] = layer
    if description is not None:
        body["description"] = description
    return _Call("PUT", f"/admin/presets/{_segment(name)}", Preset.model_validate, json=body, admin=True)


def _delete_preset_call(name: str) -> _Call[DeletedVector]:
    return _Call("DELETE", f"/admin/presets/{_segment(name)}", DeletedVector.model_validate, admin=True)


def _parse(call: _Call[T], status_code: int, load: Callable[[], Any]) -> T:
    """``call.parse`` of the decoded JSON; a body of the wrong shape is the server's (or a proxy's) fault."""
    try:
        return call.parse(load())
    except (ValueError, KeyError, TypeError) as exc:  # JSON decode errors and ValidationError are ValueErrors
        detail = str(exc) if isinstance(exc, ValidationError) else repr(exc)
        raise APIResponseValidationError(
            f"unexpected response body from {call.method} {call.path}: {detail}",
            status_code=status_code,
            type="invalid_response",
        ) from exc
