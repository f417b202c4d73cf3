"""Quality of a quantized causal LM against its bf16 reference on the same held-out tokens.

Metrics (all on identical token windows, next-token logits in fp32):

- logits SQNR (dB) of the quantized logits against the bf16 logits;
- perplexity of each model and the delta (quantized - bf16);
- mean KL(bf16 || quantized) of the next-token distributions (nats / token);
- top-1 agreement: fraction of positions where both models' argmax tokens agree;
- model size on disk (weight files) in bytes and the ratio to the reference.

The held-out text is the held-out split of ``pydoc_data.topics`` that the embedded models never saw
in training (see ``train_tiny_models.py``), tokenized with the model's own tokenizer.

    python hf_torchao_vllm/evaluate_quality.py --quantized_dir=outputs/dense-int8_weight_only
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from hf_torchao_vllm.train_tiny_models import DEFAULT_OUTPUT_DIR as EMBEDDED_MODELS_DIR

DEFAULT_REFERENCE = str(EMBEDDED_MODELS_DIR / "dense")
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclasses.dataclass(frozen=True)
class QualityReport:
    num_tokens_scored: int
    logits_sqnr_db: float
    perplexity_reference: float
    perplexity_quantized: float
    perplexity_delta: float
    kl_mean: float
    top1_agreement: float
    bytes_reference: int | None
    bytes_quantized: int | None

    @property
    def size_ratio(self) -> float | None:
        if not self.bytes_reference or self.bytes_quantized is None:
            return None
        return self.bytes_quantized / self.bytes_reference

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "size_ratio": self.size_ratio}

    def rows(self) -> list[tuple[str, str]]:
        def fmt_bytes(value: int | None) -> str:
            return "n/a" if value is None else f"{value:,}"

        ratio = self.size_ratio
        return [
            ("tokens scored", f"{self.num_tokens_scored}"),
            ("logits SQNR vs bf16 (dB)", f"{self.logits_sqnr_db:.2f}"),
            ("perplexity bf16", f"{self.perplexity_reference:.3f}"),
            ("perplexity quantized", f"{self.perplexity_quantized:.3f}"),
            ("perplexity delta", f"{self.perplexity_delta:+.3f}"),
            ("KL(bf16 || quantized), nats/token", f"{self.kl_mean:.5f}"),
            ("top-1 agreement", f"{self.top1_agreement:.4f}"),
            ("weights on disk, bf16 (bytes)", fmt_bytes(self.bytes_reference)),
            ("weights on disk, quantized (bytes)", fmt_bytes(self.bytes_quantized)),
            ("size ratio quantized / bf16", "n/a" if ratio is None else f"{ratio:.3f}"),
        ]


def with_sizes(report: QualityReport, reference_dir: str | Path, quantized_dir: str | Path) -> QualityReport:
    """``report`` with the weight bytes on disk of both models."""
    return dataclasses.replace(
        report,
        bytes_reference=weight_bytes_on_disk(reference_dir),
        bytes_quantized=weight_bytes_on_disk(quantized_dir),
    )


def weight_bytes_on_disk(model_dir: str | Path) -> int | None:
    """Total bytes of the weight files in a local model directory (``None`` if not a local dir)."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    return sum(
        f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(WEIGHT_FILE_SUFFIXES)
    )


def held_out_token_ids(tokenizer, max_tokens: int) -> torch.Tensor:
    """The held-out documents, tokenized with ``tokenizer``, joined by EOS, cut to ``max_tokens``."""
    from hf_torchao_vllm.train_tiny_models import load_corpus

    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens} must be >= 2")
    ids: list[int] = []
    for text in load_corpus().held_out_texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        if len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens], dtype=torch.long)


@torch.no_grad()
def window_logits(model, token_ids: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """fp32 logits [window_len, vocab] of non-overlapping windows of ``seq_len`` tokens."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, token_ids.numel() - 1, seq_len):
        window = token_ids[start : start + seq_len + 1]
        if window.numel() < 2:
            break
        logits = model(input_ids=window[None, :-1].to(device)).logits[0].float().cpu()
        out.append(logits)
    return out


def compare_logits(
    reference_logits: list[torch.Tensor],
    test_logits: list[torch.Tensor],
    token_ids: torch.Tensor,
    seq_len: int,
) -> dict[str, float]:
    from pytorch_scripts_common import compute_sqnr

    assert len(reference_logits) == len(test_logits)
    ref = torch.cat(reference_logits)  # [num_tokens, vocab]
    test = torch.cat(test_logits)
    targets = torch.cat(
        [
            token_ids[start + 1 : start + seq_len + 1]
            for start in range(0, seq_len * len(reference_logits), seq_len)
        ]
    )
    assert targets.numel() == ref.shape[0], (targets.numel(), ref.shape)
    ref_log_probs = torch.log_softmax(ref, dim=-1)
    test_log_probs = torch.log_softmax(test, dim=-1)
    nll_ref = torch.nn.functional.nll_loss(ref_log_probs, targets).item()
    nll_test = torch.nn.functional.nll_loss(test_log_probs, targets).item()
    kl = torch.nn.functional.kl_div(
        test_log_probs, ref_log_probs, log_target=True, reduction="batchmean"
    ).item()
    return {
        "num_tokens_scored": int(targets.numel()),
        "logits_sqnr_db": float(compute_sqnr(ref, test)),
        "perplexity_reference": math.exp(nll_ref),
        "perplexity_quantized": math.exp(nll_test),
        "perplexity_delta": math.exp(nll_test) - math.exp(nll_ref),
        "kl_mean": kl,
        "top1_agreement": (ref.argmax(-1) == test.argmax(-1)).double().mean().item(),
    }


def evaluate(
    reference_model,
    quantized_model,
    tokenizer,
    max_tokens: int = 2048,
    seq_len: int = 256,
    bytes_reference: int | None = None,
    bytes_quantized: int | None = None,
) -> QualityReport:
    token_ids = held_out_token_ids(tokenizer, max_tokens)
    metrics = compare_logits(
        window_logits(reference_model, token_ids, seq_len),
        window_logits(quantized_model, token_ids, seq_len),
        token_ids,
        seq_len,
    )
    return QualityReport(bytes_reference=bytes_reference, bytes_quantized=bytes_quantized, **metrics)


def print_report(report: QualityReport, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report.rows():
        table.add_row(name, value)
    Console(width=120).print(table)


def main(
    quantized_dir: str,
    reference: str = DEFAULT_REFERENCE,
    max_tokens: int = 2048,
    seq_len: int = 256,
    experts_implementation: str | None = None,
    json_output: str | None = None,
    overwrite: bool = False,
) -> None:
    """Compare a saved quantized model with its bf16 reference on held-out text (table; optional JSON).

    Args:
        quantized_dir: directory written by quantize_hf_model_with_torchao.py (or any HF model dir).
        reference: bf16 reference model id or path (default: the embedded dense model).
        max_tokens: held-out tokens to score.
        seq_len: tokens per scored window.
        experts_implementation: transformers experts kernel for MoE models (e.g. eager); None = default.
        json_output: also write the report to this JSON file.
        overwrite: replace an existing json_output.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytorch_scripts_common import get_device

    if max_tokens < 2 or seq_len < 1:
        raise ValueError(f"--max_tokens {max_tokens} / --seq_len {seq_len}: pass >= 2 / >= 1")
    for path in (quantized_dir,):
        if not Path(path).is_dir():
            raise ValueError(f"quantized_dir {path!r} is not a directory")
    from pytorch_scripts_common.outputs import check_output, staged_file

    target = None
    if json_output is not None:
        target = check_output(
            json_output, inputs=[quantized_dir, reference], overwrite=overwrite, tool=TOOL, kind="file",
            flag="json_output",
        )  # fmt: skip
    device = get_device()
    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    tokenizer = AutoTokenizer.from_pretrained(reference)
    reference_model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.bfloat16, **kwargs).to(
        device
    )
    quantized_model = AutoModelForCausalLM.from_pretrained(quantized_dir, dtype=torch.bfloat16, **kwargs).to(
        device
    )
    report = evaluate(
        reference_model,
        quantized_model,
        tokenizer,
        max_tokens=max_tokens,
        seq_len=seq_len,
        bytes_reference=weight_bytes_on_disk(reference),
        bytes_quantized=weight_bytes_on_disk(quantized_dir),
    )
    print_report(report, f"quality of {quantized_dir} vs {reference} ({device})")
    if target is not None:
        with staged_file(target) as staging:
            staging.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {target}")


TOOL = "hf_torchao_vllm.evaluate_quality"


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
