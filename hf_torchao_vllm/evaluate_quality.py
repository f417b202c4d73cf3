"""Quality of a quantized causal LM against its bf16 reference on the same held-out tokens.

Metrics (all on identical token windows, next-token logits in fp32):

- logits SQNR (dB) of the quantized logits against the bf16 logits;
- perplexity of each model and the delta (quantized - bf16);
- mean KL(bf16 || quantized) of the next-token distributions (nats / token);
- top-1 agreement: fraction of positions where both models' argmax tokens agree;
- model size on disk (weight files) in bytes and the ratio to the reference.

The held-out text is the held-out split of ``pydoc_data.topics`` that the embedded models never saw
in training (see ``train_tiny_models.py``), tokenized with the model's own tokenizer.

    python -m hf_torchao_vllm.evaluate_quality --model=outputs/hf_torchao_vllm/dense-int8_weight_only
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from hf_torchao_vllm.quantization.quality import (
    DEFAULT_REFERENCE,
    TOOL,
    evaluate,
    print_report,
    weight_bytes_on_disk,
)


def main(
    model: str,
    reference: str = DEFAULT_REFERENCE,
    max_tokens: int = 2048,
    seq_len: int = 256,
    experts_implementation: str | None = None,
    json_output: str | None = None,
    overwrite: bool = False,
) -> None:
    """Compare a saved quantized model with its bf16 reference on held-out text (table; optional JSON).

    Args:
        model: directory written by quantize_hf_model_with_torchao.py (or any HF model dir); also
            --quantized_dir.
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
    if not Path(model).is_dir():
        raise ValueError(f"--model {model!r} is not a directory: pass a saved model directory")
    from pytorch_scripts_common.outputs import check_output, staged_file

    target = None
    if json_output is not None:
        target = check_output(
            json_output, inputs=[model, reference], overwrite=overwrite, tool=TOOL, kind="file",
            flag="json_output",
        )  # fmt: skip
    from hf_torchao_vllm.conversion.checkpoint_reader import check_weight_files

    for directory in (model, reference):
        if Path(directory).is_dir():
            check_weight_files(directory)
    device = get_device()
    kwargs = {"experts_implementation": experts_implementation} if experts_implementation else {}
    tokenizer = AutoTokenizer.from_pretrained(reference)
    reference_model = AutoModelForCausalLM.from_pretrained(reference, dtype=torch.bfloat16, **kwargs).to(
        device
    )
    quantized_model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16, **kwargs).to(device)
    report = evaluate(
        reference_model,
        quantized_model,
        tokenizer,
        max_tokens=max_tokens,
        seq_len=seq_len,
        bytes_reference=weight_bytes_on_disk(reference),
        bytes_quantized=weight_bytes_on_disk(model),
    )
    print_report(report, f"quality of {model} vs {reference} ({device})")
    if target is not None:
        with staged_file(target) as staging:
            staging.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {target}")


# This tool's former flag name.
FLAG_ALIASES = {"quantized_dir": "model"}


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main, aliases=FLAG_ALIASES)
