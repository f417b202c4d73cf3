"""Validate a compressed-tensors checkpoint converted from torchao, against the torchao source.

1. Weights: each target shard is decompressed by the compressed-tensors library itself
   (``CompressedTensorsDequantizer(dir).process(...)``) and compared with torchao's own
   ``dequantize()`` of the source tensors (3D experts split per expert): the key sets, dtypes and
   shapes must be equal, and the values bit-exact, except NVFP4 (tolerance below).
2. transformers: the converted checkpoint is loaded through transformers' compressed-tensors
   integration and the torchao source through its torchao integration; next-token distributions
   on fixed token ids must agree (KL below ``kl_threshold``, measured).

Any mismatch prints the offending tensors and exits non-zero.

    python -m hf_torchao_vllm.validate_compressed_tensors_checkpoint \\
        --dir_source=outputs/quantized --dir_target=outputs/quantized_ct
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

from hf_torchao_vllm import ct_checkpoint as ctc
from pytorch_scripts_common.cli import run

# NVFP4: compressed-tensors divides by weight_global_scale = 1 / per_tensor_scale (float32) while
# torchao multiplies by per_tensor_scale, so the float32 scales can differ by an ulp and a bf16
# result by one rounding step. Measured on random and trained weights: max relative difference
# 0.0078 (= one bf16 ulp, 2**-7) on a handful of elements, SQNR > 60 dB.
NVFP4_MAX_RELATIVE_DIFF = 2**-7
NVFP4_MIN_SQNR_DB = 50.0
# KL(torchao || compressed-tensors-in-transformers) of next-token distributions, nats per token.
# Measured on the embedded models: 0 for most weight-only schemes (same bf16 weights, same matmul),
# 5.5e-5 for int8 weight-only (torchao scales after the int8 product), up to 1.5e-3 for
# dynamic-activation schemes (torchao quantizes activations with real int8/fp8 kernels,
# compressed-tensors fake-quantizes them in bf16). A wrong scale or layout gives KL >> 0.1.
DEFAULT_KL_THRESHOLD = 1e-2


@dataclasses.dataclass
class Mismatch:
    name: str
    problem: str


@dataclasses.dataclass
class ValidationReport:
    num_compared: int
    num_exact: int
    mismatches: list[Mismatch]
    min_sqnr_db_by_type: dict[str, float]
    kl: float | None = None
    top1_agreement: float | None = None

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _tolerance_problem(type_name: str, ref, got) -> str | None:
    """None when ``got`` matches ``ref`` under the rule for ``type_name``, else a description."""
    import torch

    if torch.equal(ref, got):
        return None
    if type_name != "NVFP4Tensor":
        diff = (ref.float() - got.float()).abs().max().item()
        return f"not bit-exact (max abs diff {diff:.3g}); {type_name} dequantization is identical math"
    ref32, got32 = ref.float(), got.float()
    rel = ((ref32 - got32).abs() / ref32.abs().clamp_min(torch.finfo(torch.float32).tiny)).max().item()
    from pytorch_scripts_common import compute_sqnr

    sqnr = compute_sqnr(ref32, got32)
    if rel > NVFP4_MAX_RELATIVE_DIFF or sqnr < NVFP4_MIN_SQNR_DB:
        return (
            f"NVFP4 max relative diff {rel:.3g} (allowed {NVFP4_MAX_RELATIVE_DIFF:.3g}), "
            f"SQNR {sqnr:.1f} dB (required {NVFP4_MIN_SQNR_DB} dB)"
        )
    return None


def check_compressed_tensors_config(directory: str) -> None:
    """``directory``'s config.json is a JSON object with a compressed-tensors quantization_config."""
    config_path = os.path.join(directory, ctc.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(f"{directory} has no {ctc.CONFIG_FILE}: pass the converter's output directory")
    config = ctc.read_json_object(config_path, "config")
    qconfig = config.get("quantization_config")
    found = qconfig.get("quant_method") if isinstance(qconfig, dict) else None
    if found != "compressed-tensors":
        raise ValueError(
            f"{config_path} has quant_method {found!r}, expected 'compressed-tensors': pass the "
            "converter's output directory as --dir_target"
        )


def _source_dtype(ckpt: ctc.TorchaoCheckpoint):
    import torch

    for meta in ckpt.params.values():
        data = meta.get("_data", {})
        dtype = data.get("dtype") or data.get("orig_dtype")
        if isinstance(dtype, dict):
            return getattr(torch, dtype["_data"])
    return torch.bfloat16


def reference_per_module(param: str, meta: dict[str, Any], parts: dict[str, Any]) -> dict[str, Any]:
    """torchao's dequantized weight under each compressed-tensors module name.

    Fused 3D experts are sliced here by hand, independently of the converter's unfusing code, so
    that a converter that swapped gate and up (or experts) cannot agree with its own reference:
    transformers stores ``experts.gate_up_proj`` as [E, 2I, H] with the gate rows first (its
    ``_default_apply_gate`` chunks the product as ``gate, up``) and ``experts.down_proj`` as [E, H, I].
    """
    dense = ctc.torchao_dequantize(meta, parts)
    if dense.ndim == 2:
        return {param.removesuffix(".weight"): dense}
    experts, _, leaf = param.rpartition(".")
    out = {}
    for expert in range(dense.shape[0]):
        if leaf == "gate_up_proj":
            rows = dense.shape[1] // 2
            out[f"{experts}.{expert}.gate_proj"] = dense[expert, :rows]
            out[f"{experts}.{expert}.up_proj"] = dense[expert, rows:]
        else:
            out[f"{experts}.{expert}.{leaf}"] = dense[expert]
    return out


def with_mxfp4_global_scales(stored: dict[str, Any]) -> dict[str, Any]:
    """compressed-tensors 0.17's model-free dequantizer reads MXFP4 modules with NVFP4's parameter names,
    ``weight_global_scale`` included, although MXFP4 has none (its own compressor never writes one):
    supply 1.0, which its dequantization divides by, so the result is the MXFP4 value unchanged."""
    import torch

    out = dict(stored)
    for name in stored:
        module = name.removesuffix(".weight_packed")
        scale = stored.get(f"{module}.weight_scale")
        if module != name and scale is not None and scale.dtype == torch.uint8:
            out.setdefault(f"{module}.weight_global_scale", torch.ones(1, dtype=torch.float32))
    return out


def validate_weights(dir_source: str, dir_target: str) -> ValidationReport:
    """Compare compressed-tensors' decompression of every target shard with torchao's dequantization."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    from pytorch_scripts_common import compute_sqnr

    ckpt = ctc.open_torchao_checkpoint(dir_source)
    check_compressed_tensors_config(dir_target)
    dequantizer = CompressedTensorsDequantizer(dir_target, dtype=_source_dtype(ckpt))
    target_shards, _ = ctc.read_shard_index(dir_target)
    if sorted(target_shards) != sorted(ckpt.shard_files):
        return ValidationReport(0, 0, [Mismatch("<shards>", f"{target_shards} != {ckpt.shard_files}")], {})

    mismatches: list[Mismatch] = []
    min_sqnr: dict[str, float] = {}
    compared = exact = 0
    for shard in ckpt.shard_files:
        target_path = os.path.join(dir_target, shard)
        reader = ctc.ShardReader(target_path)
        stored = {k: reader.get_tensor(k) for k in reader.header.tensors}
        try:
            got = dequantizer.process(with_mxfp4_global_scales(stored))
        except (KeyError, IndexError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"{target_path}: compressed-tensors cannot decompress it ({type(e).__name__}: {e}): "
                "its tensors do not match the quantization_config of its config.json; convert again"
            ) from e
        del stored
        handles: dict[str, Any] = {}
        expected: dict[str, tuple[str, torch.Tensor]] = {}
        for param in ckpt.params_in_shard(shard):
            meta = ckpt.params[param]
            parts = ctc.load_param_parts(ckpt, param, handles)
            if meta["_type"] == "Tensor":
                expected[param] = ("Tensor", parts["tensor"])
            else:
                with ctc.input_errors_of(os.path.join(dir_source, shard), param, meta, parts):
                    per_module = reference_per_module(param, meta, parts)
                for module, dense in per_module.items():
                    expected[f"{module}.weight"] = (meta["_type"], dense)
        handles.clear()
        for name in sorted(set(expected) - set(got)):
            mismatches.append(Mismatch(name, "missing from the decompressed checkpoint"))
        for name in sorted(set(got) - set(expected)):
            mismatches.append(Mismatch(name, "unexpected tensor in the decompressed checkpoint"))
        for name in sorted(set(expected) & set(got)):
            type_name, ref = expected[name]
            value = got[name]
            compared += 1
            if ref.dtype != value.dtype or ref.shape != value.shape:
                mismatches.append(
                    Mismatch(
                        name, f"{value.dtype} {tuple(value.shape)} != torchao {ref.dtype} {tuple(ref.shape)}"
                    )
                )
                continue
            problem = _tolerance_problem(type_name, ref, value)
            if problem is not None:
                mismatches.append(Mismatch(name, problem))
                continue
            exact += int(torch.equal(ref, value))
            if type_name != "Tensor":
                sqnr = compute_sqnr(ref.float(), value.float())
                min_sqnr[type_name] = min(min_sqnr.get(type_name, math.inf), sqnr)
        del got, expected
    return ValidationReport(compared, exact, mismatches, min_sqnr)


def next_token_logits(model, token_ids):
    import torch

    with torch.no_grad():
        return model(input_ids=token_ids).logits.float()


def kl_and_top1(ref_logits, test_logits) -> tuple[float, float]:
    """Mean KL(ref || test) in nats per position and top-1 agreement of two [B, T, V] logit tensors."""
    import torch

    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)
    test_logp = torch.log_softmax(test_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - test_logp)).sum(-1).mean().item()
    top1 = (ref_logits.argmax(-1) == test_logits.argmax(-1)).float().mean().item()
    return kl, top1


def dequantized_reference_model(dir_source: str):
    """The source architecture in high precision with torchao's dequantized weights loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = ctc.open_torchao_checkpoint(dir_source)
    cfg = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    model_type = cfg.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **cfg)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=_source_dtype(ckpt))
    handles: dict[str, Any] = {}
    state = {
        p: ctc.torchao_dequantize(m, ctc.load_param_parts(ckpt, p, handles)) for p, m in ckpt.params.items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(hf_config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"reference model does not match the checkpoint: {missing=} {unexpected=}")
    if tied:
        model.tie_weights()
    return model.eval().to(torch.get_default_device())


def compare_in_transformers(dir_source: str, dir_target: str, seed: int = 0) -> tuple[float, float]:
    """KL and top-1 agreement of the converted checkpoint (transformers + compressed-tensors)
    against the torchao source (transformers + torchao) on fixed random token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from pytorch_scripts_common import set_seed

    set_seed(seed)
    ckpt = ctc.open_torchao_checkpoint(dir_source)
    quantized_3d = any(m["_type"] != "Tensor" and not p.endswith(".weight") for p, m in ckpt.params.items())
    # transformers' default grouped-mm experts kernel transposes the 3D weight, which torchao tensors do
    # not implement; its eager per-expert loop slices them (as quantize_hf_model_with_torchao loads them).
    kwargs = {"experts_implementation": "eager"} if quantized_3d else {}
    try:
        torchao_model = AutoModelForCausalLM.from_pretrained(dir_source, dtype="auto", **kwargs)
    except (RuntimeError, ValueError) as e:
        # e.g. torchao 0.18 cannot deserialize Float8Tensor with PerBlock activation kwargs.
        print(f"note: transformers cannot load the torchao checkpoint ({str(e).splitlines()[0][:200]});")
        print("      the reference is a high-precision model holding torchao's dequantized weights")
        torchao_model = dequantized_reference_model(dir_source)
    vocab = torchao_model.config.get_text_config().vocab_size
    token_ids = torch.randint(0, vocab, (2, 32))
    ref = next_token_logits(torchao_model, token_ids)
    del torchao_model
    ct_model = AutoModelForCausalLM.from_pretrained(dir_target, dtype="auto")
    test = next_token_logits(ct_model, token_ids)
    return kl_and_top1(ref, test)


def run_validation(
    dir_source: str,
    dir_target: str,
    check_transformers: bool = True,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
) -> ValidationReport:
    """Validate and print; raises SystemExit(1) on any mismatch."""
    from rich.console import Console

    console = Console()
    report = validate_weights(dir_source, dir_target)
    sqnr = ", ".join(f"{k} {v:.1f} dB" for k, v in sorted(report.min_sqnr_db_by_type.items()))
    console.print(
        f"weights: {report.num_compared} tensors compared with torchao's dequantization, "
        f"{report.num_exact} bit-exact; min SQNR by type: {sqnr or 'n/a'}"
    )
    if report.ok and check_transformers:
        report.kl, report.top1_agreement = compare_in_transformers(dir_source, dir_target)
        console.print(
            f"transformers: KL(torchao || compressed-tensors) = {report.kl:.3g} nats/token "
            f"(threshold {kl_threshold:g}), top-1 agreement {report.top1_agreement:.3f}"
        )
        if not report.kl <= kl_threshold:
            report.mismatches.append(Mismatch("<logits>", f"KL {report.kl:.3g} > threshold {kl_threshold:g}"))
    if report.mismatches:
        console.print(f"[red]VALIDATION FAILED: {len(report.mismatches)} problem(s)[/red]")
        for m in report.mismatches[:50]:
            console.print(f"  {m.name}: {m.problem}", markup=False)
        sys.stdout.flush()
        raise SystemExit(1)
    console.print("[green]validation passed[/green]")
    return report


def main(
    dir_source: str,
    dir_target: str,
    check_transformers: bool = True,
    kl_threshold: float = DEFAULT_KL_THRESHOLD,
) -> None:
    """Validate a converted compressed-tensors checkpoint against its torchao source; exit 1 on mismatch.

    Args:
        dir_source: the torchao checkpoint directory the conversion read.
        dir_target: the compressed-tensors checkpoint directory it wrote.
        check_transformers: also load both checkpoints in transformers and compare next-token logits.
        kl_threshold: largest allowed mean KL(torchao || compressed-tensors), nats per token.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    for d, what in ((dir_source, "dir_source"), (dir_target, "dir_target")):
        if not os.path.isdir(d):
            raise ValueError(f"--{what} {d} is not a directory: pass a checkpoint directory")
    if not kl_threshold >= 0:
        raise ValueError(f"--kl_threshold is {kl_threshold}: pass a non-negative number of nats")
    ctc.open_torchao_checkpoint(dir_source)
    check_compressed_tensors_config(dir_target)
    run_validation(dir_source, dir_target, check_transformers=check_transformers, kl_threshold=kl_threshold)


if __name__ == "__main__":
    run(main)
