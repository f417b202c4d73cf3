"""Train the two tiny embedded models (dense Llama, Qwen3-MoE) and their BPE tokenizer on CPU.

Random-weight models have near-tied logits, so their greedy generations and quantization quality
deltas mean nothing. This script trains small but *real* models on English text that ships with
Python itself (``pydoc_data.topics``, the text behind ``help('topics')``), so the quantize / convert
/ serve tools have a meaningful offline default.

Data split: the topics, sorted by name, are cut into documents of 10 consecutive paragraphs; every
10th document is held out, the rest train the tokenizer and the models. Held-out perplexity is
reported next to the unigram baseline (token frequencies counted on the training split, add-one
smoothed), on the same held-out tokens.

Output (``output_dir``, default ``hf_torchao_vllm/embedded_models``)::

    dense/  LlamaForCausalLM     config.json, model.safetensors (bf16), tokenizer files,
    moe/    Qwen3MoeForCausalLM  generation_config.json, training_report.json

    python -m hf_torchao_vllm.train_tiny_models --output_dir=/tmp/retrained
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from hf_torchao_vllm.tiny_models import EMBEDDED_DIR, load_corpus

DEFAULT_OUTPUT_DIR = EMBEDDED_DIR
TOOL = "hf_torchao_vllm.train_tiny_models"
MODEL_KINDS = ("dense", "moe")
EOS_TOKEN = "<|endoftext|>"


# byte-level BPE starts from 256 byte tokens plus the EOS token; the next multiple of 128 above them
MIN_VOCAB_SIZE = 384


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2 style) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the BPE trainer produced {tokenizer.get_vocab_size()} tokens, wanted vocab_size={vocab_size}; "
            "use a smaller vocab_size for this corpus"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        model_max_length=2048,
    )


def encode_documents(tokenizer, texts: list[str]) -> torch.Tensor:
    """One 1D token stream: every document followed by the end-of-text token."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def make_config(kind: str, vocab_size: int, eos_token_id: int, max_positions: int):
    """Dimensions are multiples of 128 (every torchao block / group size divides them); head_dim 64
    is one of vLLM CPU attention's supported head sizes. Embeddings are untied so lm_head is a
    separate weight that quantization recipes can skip (the usual choice) without touching the
    input embedding."""
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }
    if kind == "dense":
        from transformers import LlamaConfig

        return LlamaConfig(intermediate_size=768, **common)
    if kind == "moe":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            moe_intermediate_size=256,
            intermediate_size=768,  # unused: every layer is sparse (decoder_sparse_step=1)
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            output_router_logits=True,  # adds the load-balancing loss during training
            router_aux_loss_coef=0.01,
            **common,
        )
    raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(MODEL_KINDS)}")


@torch.no_grad()
def held_out_nll(model, tokens: torch.Tensor, seq_len: int) -> tuple[float, int]:
    """Mean next-token negative log-likelihood (nats) over non-overlapping windows of ``seq_len``."""
    model.eval()
    total_nll, total_count = 0.0, 0
    for start in range(0, tokens.numel() - 1, seq_len):
        window = tokens[start : start + seq_len + 1]
        if window.numel() < 2:
            break
        logits = model(input_ids=window[None, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum")
        total_nll += nll.item()
        total_count += window.numel() - 1
    model.train()
    return total_nll / total_count, total_count


def unigram_nll(train_tokens: torch.Tensor, held_out_tokens: torch.Tensor, vocab_size: int) -> float:
    """Mean NLL (nats) of the held-out tokens under add-one-smoothed training-split token frequencies,
    counting the same predicted tokens as ``held_out_nll`` (all but the first)."""
    counts = torch.bincount(train_tokens, minlength=vocab_size).double() + 1.0
    log_probs = (counts / counts.sum()).log()
    return -log_probs[held_out_tokens[1:]].mean().item()


def train_one_model(
    kind: str,
    train_tokens: torch.Tensor,
    held_out_tokens: torch.Tensor,
    tokenizer,
    num_steps: int,
    batch_size: int,
    seq_len: int,
    learning_rate: float,
    seed: int,
):
    from transformers import AutoModelForCausalLM

    from pytorch_scripts_common import set_seed

    set_seed(seed)
    config = make_config(kind, len(tokenizer), tokenizer.eos_token_id, max_positions=2048)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.1, betas=(0.9, 0.95))
    num_warmup = max(1, num_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < num_warmup:
            return learning_rate * (step + 1) / num_warmup
        progress = (step - num_warmup) / max(1, num_steps - num_warmup)
        return learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(seed)
    start_time = time.perf_counter()
    for step in range(num_steps):
        starts = torch.randint(0, train_tokens.numel() - seq_len, (batch_size,), generator=generator)
        batch = torch.stack([train_tokens[s : s + seq_len] for s in starts.tolist()])  # [batch, seq_len]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        # bf16 autocast: ~1.7x less CPU time per step than fp32 on AVX512-BF16 CPUs; master weights,
        # optimizer state and the loss stay fp32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss  # transformers shifts the labels itself
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 25 == 0 or step == num_steps - 1:
            elapsed = time.perf_counter() - start_time
            print(
                f"[{kind}] step {step:5d}/{num_steps}  loss {loss.item():.3f}  {elapsed:6.0f} s", flush=True
            )
    train_seconds = time.perf_counter() - start_time
    return model, train_seconds


def main(
    output_dir: str = str(DEFAULT_OUTPUT_DIR),
    models: str = "dense,moe",
    vocab_size: int = 4096,
    num_steps_dense: int = 600,
    num_steps_moe: int = 500,
    batch_size: int = 8,
    seq_len: int = 128,
    learning_rate: float = 4e-3,
    seed: int = 0,
    num_threads: int = 1,
    overwrite: bool = False,
) -> None:
    """Train the embedded tiny dense (Llama) and MoE (Qwen3-MoE) models with a shared BPE tokenizer.

    Args:
        output_dir: directory that receives one sub-directory per model (dense/, moe/).
        models: comma-separated subset of dense,moe to train.
        vocab_size: BPE vocabulary size (a multiple of 128 keeps lm_head quantizable by every recipe).
        num_steps_dense: optimizer steps for the dense model.
        num_steps_moe: optimizer steps for the MoE model.
        batch_size: sequences per step.
        seq_len: tokens per training sequence.
        learning_rate: peak AdamW learning rate (linear warm-up, cosine decay).
        seed: seed for the model init and the batch sampling (the tokenizer is deterministic).
        num_threads: torch intra-op threads; 1 wastes least CPU time on a machine shared with other jobs.
        overwrite: replace existing model directories.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()  # transformers may import torchao
    from pytorch_scripts_common import set_seed

    counts = {
        "num_steps_dense": num_steps_dense,
        "num_steps_moe": num_steps_moe,
        "batch_size": batch_size,
        "seq_len": seq_len,
    }
    targets = check_arguments(output_dir, models, vocab_size, num_threads, counts, learning_rate, overwrite)
    torch.set_num_threads(num_threads)
    set_seed(seed)
    data = prepare_data(vocab_size)
    num_steps = {"dense": num_steps_dense, "moe": num_steps_moe}
    for kind, target in targets.items():
        model, train_seconds = train_one_model(
            kind, data.train_tokens, data.held_out_tokens, data.tokenizer, num_steps[kind], batch_size,
            seq_len, learning_rate, seed,
        )  # fmt: skip
        settings = {
            "num_steps": num_steps[kind],
            "batch_size": batch_size,
            "seq_len": seq_len,
            "learning_rate": learning_rate,
            "seed": seed,
            "vocab_size": vocab_size,
            "train_seconds": round(train_seconds, 1),
        }
        model, report = evaluate_trained_model(kind, model, data, settings)
        save_model(target, model, data.tokenizer, report)


def check_arguments(
    output_dir: str,
    models,
    vocab_size: int,
    num_threads: int,
    counts: dict[str, int],
    learning_rate: float,
    overwrite: bool,
) -> dict[str, Path]:
    """The output folder of each model kind to train, every mistake refused before any work."""
    from pytorch_scripts_common.cli import UsageError, parse_list
    from pytorch_scripts_common.outputs import check_output

    kinds = parse_list(models, str, name="models")
    for kind in kinds:
        if kind not in MODEL_KINDS:
            raise UsageError(
                f"unknown model {kind!r} in models={models!r}: choose from {', '.join(MODEL_KINDS)}"
            )
    if vocab_size % 128 != 0 or vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(
            f"vocab_size={vocab_size} must be a multiple of 128 and >= {MIN_VOCAB_SIZE}: pass e.g. 4096"
        )
    if num_threads < 1:
        raise UsageError(f"num_threads={num_threads} must be >= 1: pass e.g. 1")
    for name, value in counts.items():
        minimum = 2 if name == "seq_len" else 1
        if value < minimum:
            raise UsageError(f"--{name} is {value}: pass an integer >= {minimum}")
    if not learning_rate > 0:
        raise UsageError(f"--learning_rate is {learning_rate}: pass a positive number")
    return {
        kind: check_output(Path(output_dir) / kind, overwrite=overwrite, tool=TOOL, flag="output_dir")
        for kind in kinds
    }


@dataclasses.dataclass(frozen=True)
class TrainingData:
    tokenizer: Any
    train_tokens: torch.Tensor  # [num_train_tokens], documents joined with EOS
    held_out_tokens: torch.Tensor  # [num_held_out_tokens]
    baseline_nll: float  # unigram model of the training split on the held-out tokens


def prepare_data(vocab_size: int) -> TrainingData:
    """The corpus split, the BPE tokenizer trained on its training part, both parts encoded."""
    corpus = load_corpus()
    tokenizer = train_tokenizer(corpus.train_texts, vocab_size)
    train_tokens = encode_documents(tokenizer, corpus.train_texts)
    held_out_tokens = encode_documents(tokenizer, corpus.held_out_texts)
    baseline_nll = unigram_nll(train_tokens, held_out_tokens, vocab_size)
    print(
        f"corpus: {len(corpus.train_texts)} train docs ({train_tokens.numel()} tokens), "
        f"{len(corpus.held_out_texts)} held-out docs ({held_out_tokens.numel()} tokens); "
        f"unigram held-out perplexity {math.exp(baseline_nll):.1f}"
    )
    return TrainingData(tokenizer, train_tokens, held_out_tokens, baseline_nll)


def evaluate_trained_model(kind: str, model, data: TrainingData, settings: dict[str, Any]):
    """The model as it is saved (bf16, no router aux outputs) and its training report; a model that
    does not beat the unigram baseline on held-out text is an error."""
    model.config.output_router_logits = False  # inference default; only training needs the aux loss
    model = model.to(torch.bfloat16)
    nll, num_tokens = held_out_nll(model, data.held_out_tokens, seq_len=512)
    report = {
        "model": kind,
        "architecture": type(model).__name__,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "held_out_perplexity_bf16": math.exp(nll),
        "unigram_baseline_perplexity": math.exp(data.baseline_nll),
        "held_out_tokens_scored": num_tokens,
        "train_tokens": data.train_tokens.numel(),
        **settings,
        "torch_version": torch.__version__,
        "num_threads": torch.get_num_threads(),
    }
    print(json.dumps(report, indent=2))
    if not nll < data.baseline_nll:
        raise RuntimeError(
            f"{kind}: held-out perplexity {math.exp(nll):.1f} is not below the unigram baseline "
            f"{math.exp(data.baseline_nll):.1f}; train longer (--num_steps_{kind})"
        )
    return model, report


def save_model(target: Path, model, tokenizer, report: dict[str, Any]) -> None:
    """Model (greedy generation config), tokenizer and training report, published atomically."""
    from pytorch_scripts_common.outputs import staged_dir

    with staged_dir(target, tool=TOOL) as staging:
        model.generation_config.do_sample = False
        model.generation_config.max_new_tokens = 32
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
