"""Tiny random-weight causal LMs of every supported architecture, built from a config in seconds.

The tokenizer is a character-level one made with the ``tokenizers`` library, so nothing is fetched.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<s>", "</s>"]
ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + " \n")
VOCAB_SIZE = len(SPECIALS) + len(ALPHABET)


ARCH_CONFIGS: dict[str, dict[str, object]] = {
    "llama": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=64, max_position_embeddings=256, sliding_window=64),
    "qwen2": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=256),
    "qwen3": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, intermediate_size=64, max_position_embeddings=256),
    "gemma": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=16, intermediate_size=64, max_position_embeddings=256),
    "gemma2": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=8, intermediate_size=64, max_position_embeddings=256, sliding_window=64),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=256),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=256),
    "gptj": dict(n_embd=32, n_layer=4, n_head=4, n_positions=256, rotary_dim=4),
}


# A chat template over the tiny tokenizer's characters: one line per turn, then the assistant's header.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer over printable ASCII."""
    vocab = {token: index for index, token in enumerate(SPECIALS + ALPHABET)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    if add_bos:
        from tokenizers import processors

        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<pad>"
    )


def tiny_model(model_type: str, seed: int = 0) -> PreTrainedModel:
    """A random-weight model of ``model_type`` with the tiny tokenizer's vocabulary, in eval mode."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        model_type, vocab_size=VOCAB_SIZE, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        **ARCH_CONFIGS[model_type],
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init leaves some families with near-zero weights; widen them so steering visibly matters.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    model.eval()
    return model


def save_tiny_model(model_type: str, directory: Path, seed: int = 0) -> Path:
    """Write a tiny model and its tokenizer as a local checkpoint that ``FVSTEER_MODEL`` can name."""
    tiny_model(model_type, seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
