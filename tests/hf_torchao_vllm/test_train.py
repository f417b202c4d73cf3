"""train_tiny_models: the CLI is there (tests never retrain), the split is deterministic and disjoint,
and the committed models are what the README says: trained (held-out perplexity well below the
unigram baseline), vLLM-CPU-compatible shapes, within the size budget."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_torchao_vllm.train_tiny_models import (
    DEFAULT_OUTPUT_DIR,
    encode_documents,
    held_out_nll,
    load_corpus,
    unigram_nll,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # CPUAttentionBackend, vllm 0.32


def test_help_lists_every_argument():
    result = subprocess.run(
        [sys.executable, "-m", "hf_torchao_vllm.train_tiny_models", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    help_text = result.stdout + result.stderr  # fire prints --help to stderr when not on a tty
    for argument in ("output_dir", "num_steps_dense", "num_steps_moe", "seed", "overwrite"):
        assert f"--{argument}" in help_text


def test_corpus_split_is_deterministic_and_disjoint():
    first, second = load_corpus(), load_corpus()
    assert first == second
    assert set(first.train_texts).isdisjoint(first.held_out_texts)
    held_out_chars = sum(map(len, first.held_out_texts))
    total_chars = held_out_chars + sum(map(len, first.train_texts))
    assert 0.05 < held_out_chars / total_chars < 0.2


def test_existing_output_is_refused_before_training(tmp_path):
    from hf_torchao_vllm.train_tiny_models import main

    (tmp_path / "dense").mkdir()
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        main(output_dir=str(tmp_path), models="dense")
    (tmp_path / "dense" / "mine.txt").write_text("not written by the tool")
    with pytest.raises(ValueError, match="has no .pytorch_scripts_output marker"):
        main(output_dir=str(tmp_path), models="dense", overwrite=True)
    assert (tmp_path / "dense" / "mine.txt").read_text() == "not written by the tool"
    with pytest.raises(ValueError, match="unknown model 'big'"):
        main(output_dir=str(tmp_path), models="big")


@pytest.mark.parametrize("vocab_size", [0, -128, 256])
def test_vocab_size_below_the_byte_alphabet_is_refused_before_training(tmp_path, vocab_size):
    from hf_torchao_vllm.train_tiny_models import main

    with pytest.raises(ValueError, match=rf"vocab_size={vocab_size} must be a multiple of 128 and >= 384"):
        main(output_dir=str(tmp_path / "o"), models="dense", vocab_size=vocab_size)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_committed_model_is_trained_and_vllm_cpu_compatible(kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = DEFAULT_OUTPUT_DIR / kind
    config = json.loads((directory / "config.json").read_text())
    assert config["head_dim"] in VLLM_CPU_HEAD_SIZES
    assert config["tie_word_embeddings"] is False
    for key in ("hidden_size", "vocab_size", "intermediate_size"):
        assert config[key] % 128 == 0, key
    if kind == "moe":
        assert config["moe_intermediate_size"] % 128 == 0
    report = json.loads((directory / "training_report.json").read_text())
    assert report["held_out_perplexity_bf16"] < 0.5 * report["unigram_baseline_perplexity"]

    # recompute the held-out perplexity of the committed weights on the first 2048 held-out tokens
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    corpus = load_corpus()
    held_out = encode_documents(tokenizer, corpus.held_out_texts)[:2048]
    nll, _ = held_out_nll(model, held_out, seq_len=512)
    baseline = unigram_nll(encode_documents(tokenizer, corpus.train_texts), held_out, len(tokenizer))
    assert math.exp(nll) < 0.5 * math.exp(baseline), (math.exp(nll), math.exp(baseline))


def test_embedded_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in DEFAULT_OUTPUT_DIR.rglob("*") if p.is_file())
    assert total <= 40 * 1024 * 1024
