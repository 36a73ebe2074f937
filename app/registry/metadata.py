"""A vector's metadata, parsed once from the file's strings into typed views (the public summary, the public
description, the admin's full record). The file keeps strings (safetensors metadata is ``str → str``)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

JSON_FIELDS = ("heads", "metrics", "provenance")
INT_FIELDS = ("d_model", "layer", "n_pairs")


class VectorSummary(BaseModel):
    """``GET /vectors``: what a user needs to pick a vector."""

    name: str
    relation: str
    layer: int
    norm: float
    method: str
    model: str
    digest: str = Field(description="First 16 hex digits of the SHA-256 of the float32 values: what a steering "
                        "receipt names.")


class VectorInfo(VectorSummary):
    """``GET /vectors/{name}``."""

    d_model: int
    created: str
    heads: list[Any] = Field(description="[[layer, head, aie], …] of a mediation vector; empty otherwise.")
    metrics: dict[str, Any] = Field(description="What was measured when the vector was made (e.g. layer sweep).")


class VectorMetadata(VectorInfo):
    """The whole record (admin routes)."""

    format: str
    model_fingerprint: str
    dataset_sha256: str
    n_pairs: int
    template: str
    provenance: dict[str, str] = Field(default_factory=dict, description="An imported file's own metadata (a "
                                       "GGUF control vector's keys), kept as it came.")

    @classmethod
    def from_strings(cls, strings: dict[str, str], digest: str) -> VectorMetadata:
        """Decode the file's strings: JSON fields, integers, the norm (absent ones take neutral values); ``digest``
        is the values' (never stored: it cannot disagree with them)."""
        values: dict[str, Any] = {**strings, "digest": digest}
        for key in JSON_FIELDS:
            values[key] = json.loads(strings.get(key) or ("[]" if key == "heads" else "{}"))
        for key in INT_FIELDS:
            values[key] = int(strings.get(key) or 0)
        values["norm"] = float(strings.get("norm") or 0.0)
        for key in ("relation", "created", "format", "model_fingerprint", "dataset_sha256", "template", "model",
                    "method"):
            values.setdefault(key, "")
        return cls.model_validate(values)

    def summary(self) -> VectorSummary:
        return VectorSummary.model_validate(self.model_dump(include=set(VectorSummary.model_fields)))

    def info(self) -> VectorInfo:
        return VectorInfo.model_validate(self.model_dump(include=set(VectorInfo.model_fields)))
