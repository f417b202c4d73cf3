"""Small bf16 checkpoints for the converter's tests: the embedded models when present, else random ones.

The embedded trained models (``embedded_models/dense``, ``embedded_models/moe``) are the defaults;
where a test needs a shape they do not have (a multi-shard checkpoint of a given size), or before
they exist, a random-weight model of the same architecture family is saved instead. Every
dimension is a multiple of 128 so that every recipe (128x128 fp8 blocks, int4 group 32, NVFP4
blocks of 16) applies.
"""

from __future__ import annotations

import os

import torch

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded_models")


def embedded_model(kind: str) -> str | None:
    """Path of the embedded ``dense`` or ``moe`` model if it is present, else None."""
    path = os.path.join(EMBEDDED_DIR, kind)
    has_weights = os.path.isdir(path) and any(f.endswith(".safetensors") for f in os.listdir(path))
    return path if has_weights and os.path.isfile(os.path.join(path, "config.json")) else None


def save_random_llama(
    path: str, hidden_size: int = 256, intermediate_size: int = 512, num_layers: int = 2, seed: int = 0
) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=max(1, hidden_size // 128),
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def save_random_qwen3_moe(path: str, seed: int = 0) -> str:
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    return path


def dense_model(tmp_dir: str) -> str:
    return embedded_model("dense") or save_random_llama(os.path.join(tmp_dir, "random_llama"))


def moe_model(tmp_dir: str) -> str:
    return embedded_model("moe") or save_random_qwen3_moe(os.path.join(tmp_dir, "random_qwen3_moe"))
