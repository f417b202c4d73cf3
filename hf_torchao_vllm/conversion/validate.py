"""Validation of a compressed-tensors checkpoint against the torchao checkpoint it was converted from:
compressed-tensors' decompression vs torchao's dequantization (``validate_weights``), transformers'
next-token distributions of both (``compare_in_transformers``); the steps of
``python -m hf_torchao_vllm.validate_compressed_tensors_checkpoint`` (described there)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any

from hf_torchao_vllm.conversion import checkpoint_reader

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

    from hf_torchao_vllm.quantization.recipes import CONVERSION_TOLERANCES

    if torch.equal(ref, got):
        return None
    tolerance = CONVERSION_TOLERANCES.get(type_name)
    if tolerance is None:
        diff = (ref.float() - got.float()).abs().max().item()
        return f"not bit-exact (max abs diff {diff:.3g}); {type_name} dequantization is identical math"
    ref32, got32 = ref.float(), got.float()
    rel = ((ref32 - got32).abs() / ref32.abs().clamp_min(torch.finfo(torch.float32).tiny)).max().item()
    from pytorch_scripts_common import compute_sqnr

    sqnr = compute_sqnr(ref32, got32)
    if rel > tolerance.max_relative_diff or sqnr < tolerance.min_sqnr_db:
        return (
            f"{type_name} max relative diff {rel:.3g} (allowed {tolerance.max_relative_diff:.3g}), "
            f"SQNR {sqnr:.1f} dB (required {tolerance.min_sqnr_db} dB)"
        )
    return None


def check_compressed_tensors_config(directory: str) -> None:
    """``directory``'s config.json is a JSON object with a compressed-tensors quantization_config."""
    config_path = os.path.join(directory, checkpoint_reader.CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(
            f"{directory} has no {checkpoint_reader.CONFIG_FILE}: pass the converter's output directory"
        )
    config = checkpoint_reader.read_json_object(config_path, "config")
    qconfig = config.get("quantization_config")
    found = qconfig.get("quant_method") if isinstance(qconfig, dict) else None
    if found != "compressed-tensors":
        raise ValueError(
            f"{config_path} has quant_method {found!r}, expected 'compressed-tensors': pass the "
            "converter's output directory as --model"
        )


def _group_of(module: str, groups: dict[str, Any]) -> str | None:
    """The first config group with a target that names ``module``, by compressed-tensors' own rule
    (an exact name, or an ``re:`` regex)."""
    from compressed_tensors.utils.match import match_name

    for group_name, group in groups.items():
        if any(match_name(module, target) for target in group.get("targets") or []):
            return group_name
    return None


def scheme_mismatches(expected: dict[str, Any], quantization_config: dict[str, Any]) -> list[Mismatch]:
    """Each module whose config group in ``quantization_config`` is not the compressed-tensors scheme
    the converter derives from the torchao source (``expected``: module -> ``CtScheme``). Bit-exact
    weights do not show it: int8 weight-only and W8A8 store the same int8 weights and scales, and
    the activation quantization only moves the KL by ~1e-4."""
    import json

    groups = quantization_config.get("config_groups") or {}
    problems = []
    for module, scheme in sorted(expected.items()):
        group_name = _group_of(module, groups)
        if group_name is None:
            problems.append(Mismatch(module, f"no config group targets it; torchao source is {scheme.label}"))
            continue
        group = groups[group_name]
        want = scheme.to_config_group([])
        differs = [
            key
            for key in ("weights", "input_activations", "format")
            if json.dumps(group.get(key), sort_keys=True) != json.dumps(want[key], sort_keys=True)
        ]
        if differs:
            problems.append(
                Mismatch(
                    module,
                    f"config group {group_name} differs in {', '.join(differs)} from the "
                    f"{scheme.label} scheme of its torchao source",
                )
            )
    return problems


def _source_dtype(ckpt: checkpoint_reader.TorchaoCheckpoint):
    import torch

    for meta in ckpt.params.values():
        data = meta.get("_data", {})
        dtype = data.get("dtype") or data.get("orig_dtype")
        if isinstance(dtype, dict):
            return getattr(torch, dtype["_data"])
    return torch.bfloat16


def reference_per_module(
    ckpt: checkpoint_reader.TorchaoCheckpoint, param: str, meta: dict[str, Any], parts: dict[str, Any]
) -> dict[str, Any]:
    """torchao's dequantized weight under each compressed-tensors module name.

    Fused 3D experts are dequantized whole and handed to transformers' own
    ``revert_weight_conversion`` (the split ``save_pretrained`` performs on a bf16 model), not to the
    converter's unfusing code, so a converter that swapped gate and up (or experts) cannot agree
    with its reference.
    """
    dense = checkpoint_reader.torchao_dequantize(meta, parts)
    if dense.ndim == 2:
        return {param.removesuffix(".weight"): dense}
    per_expert = ckpt.naming.revert({ckpt.memory_name(param): dense})
    if any(value.ndim != 2 for value in per_expert.values()):
        raise ValueError(f"transformers stores {param!r} fused: it has no per-expert reference")
    return {name.removesuffix(".weight"): value for name, value in per_expert.items()}


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


def _redo_in_reference_dtype(
    got: dict[str, Any],
    expected: dict[str, tuple[str, Any]],
    stored: dict[str, Any],
    directory: str,
    dequantizers: dict[Any, Any],
) -> None:
    """compressed-tensors decompresses a shard to one dtype; a weight torchao holds in another (HYV4
    keeps its indexer's ``weights_proj`` in float32) is decompressed again in that dtype."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    wanted: dict[Any, list[str]] = {}
    for name, (type_name, ref) in expected.items():
        if type_name != "Tensor" and name in got and got[name].dtype != ref.dtype:
            wanted.setdefault(ref.dtype, []).append(name)
    for dtype, names in wanted.items():
        if dtype not in dequantizers:
            dequantizers[dtype] = CompressedTensorsDequantizer(directory, dtype=dtype)
        again = dequantizers[dtype].process(with_mxfp4_global_scales(stored))
        got.update({name: again[name] for name in names})


def validate_weights(dir_source: str, dir_target: str) -> ValidationReport:
    """Compare compressed-tensors' decompression of every target shard with torchao's dequantization."""
    import torch
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    from pytorch_scripts_common import compute_sqnr

    ckpt = checkpoint_reader.open_torchao_checkpoint(dir_source)
    check_compressed_tensors_config(dir_target)
    dequantizer = CompressedTensorsDequantizer(dir_target, dtype=_source_dtype(ckpt))
    dequantizers = {dequantizer.dtype: dequantizer}
    target_shards, _ = checkpoint_reader.read_shard_index(dir_target)
    if sorted(target_shards) != sorted(ckpt.shard_files):
        return ValidationReport(0, 0, [Mismatch("<shards>", f"{target_shards} != {ckpt.shard_files}")], {})

    from hf_torchao_vllm.conversion import schemes

    target_config = checkpoint_reader.read_json_object(
        os.path.join(dir_target, checkpoint_reader.CONFIG_FILE), "config"
    )["quantization_config"]
    expected_schemes: dict[str, Any] = {}
    mismatches: list[Mismatch] = []
    min_sqnr: dict[str, float] = {}
    compared = exact = 0
    for shard in ckpt.shard_files:
        target_path = os.path.join(dir_target, shard)
        reader = checkpoint_reader.ShardReader(target_path)
        stored = {k: reader.get_tensor(k) for k in reader.header.tensors}
        try:
            got = dequantizer.process(with_mxfp4_global_scales(stored))
        except (KeyError, IndexError, TypeError, RuntimeError) as e:
            raise ValueError(
                f"{target_path}: compressed-tensors cannot decompress it ({type(e).__name__}: {e}): "
                "its tensors do not match the quantization_config of its config.json; convert again"
            ) from e
        handles: dict[str, Any] = {}
        expected: dict[str, tuple[str, torch.Tensor]] = {}
        for param in ckpt.params_in_shard(shard):
            meta = ckpt.params[param]
            parts = checkpoint_reader.load_param_parts(ckpt, param, handles)
            if meta["_type"] == "Tensor":
                expected[param] = ("Tensor", parts["tensor"])
            else:
                with checkpoint_reader.input_errors_of(os.path.join(dir_source, shard), param, meta, parts):
                    per_module = reference_per_module(ckpt, param, meta, parts)
                    shape = parts["qdata"].shape
                    slices = ckpt.expert_slices(param, shape) if len(shape) == 3 else None
                    for conversion in schemes.convert_parameter(param, meta, parts, slices):
                        expected_schemes[conversion.module] = conversion.scheme
                for module, dense in per_module.items():
                    expected[f"{module}.weight"] = (meta["_type"], dense)
        handles.clear()
        _redo_in_reference_dtype(got, expected, stored, dir_target, dequantizers)
        del stored
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
    mismatches.extend(scheme_mismatches(expected_schemes, target_config))
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
    """The source architecture in high precision with torchao's dequantized weights loaded.

    The weights are written under their stored names to a temporary plain checkpoint that
    transformers loads, so it renames and fuses them as it does the source's own."""
    import json
    import tempfile

    import torch
    from safetensors.torch import save_file

    ckpt = checkpoint_reader.open_torchao_checkpoint(dir_source)
    handles: dict[str, Any] = {}
    state = {}
    for param, meta in ckpt.params.items():
        parts = checkpoint_reader.load_param_parts(ckpt, param, handles)
        state[param] = checkpoint_reader.torchao_dequantize(meta, parts).clone()  # off the shard's map
    handles.clear()
    config = {k: v for k, v in ckpt.config.items() if k != "quantization_config"}
    with tempfile.TemporaryDirectory() as plain:
        save_file(state, os.path.join(plain, "model.safetensors"), metadata={"format": "pt"})
        del state
        with open(os.path.join(plain, checkpoint_reader.CONFIG_FILE), "w") as f:
            json.dump(config, f)
        model = load_every_weight(plain, dtype=_source_dtype(ckpt))
    return model.eval().to(torch.get_default_device())


class IncompleteLoadError(ValueError):
    """transformers loaded a checkpoint but left some of the model's weights out (or some of the
    checkpoint's tensors unused): the checkpoint's names are not the ones transformers reads."""


class ExpertsNotLoadableError(IncompleteLoadError):
    """transformers' compressed-tensors loader expects MoE experts quantized: it rewrites every expert
    converter to read packed per-expert tensors (``update_weight_conversions`` /
    ``DecompressExperts``), and builds Llama-4's experts as per-expert Linears. Experts a
    compressed-tensors checkpoint keeps in high precision, as transformers stores them (per expert,
    or fused for Llama-4), are then left out: a transformers limitation, not a wrong checkpoint."""


_QUANTIZED_SUFFIXES = ("_packed", "_scale", "_shape", "_zero_point", "_global_scale")


def _only_unquantized_experts(missing: list[str], unexpected: list[str]) -> bool:
    return (
        bool(missing and unexpected)
        and all(".experts." in name for name in missing + unexpected)
        and not any(name.endswith(_QUANTIZED_SUFFIXES) for name in unexpected)
    )


def load_every_weight(directory: str, dtype: Any = "auto", **kwargs):
    """``AutoModelForCausalLM.from_pretrained(directory)``, refusing a load that initialized any
    weight at random or ignored any stored tensor (transformers only warns about both)."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        directory, dtype=dtype, output_loading_info=True, **kwargs
    )
    missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
    if _only_unquantized_experts(missing, unexpected):
        raise ExpertsNotLoadableError(
            f"transformers' compressed-tensors loader reads MoE experts only as quantized tensors, and "
            f"{directory} keeps {len(unexpected)} expert weight(s) in high precision (e.g. {unexpected[0]}): "
            f"it leaves {len(missing)} fused expert weight(s) unloaded (e.g. {missing[0]})"
        )
    if missing or unexpected:
        raise IncompleteLoadError(
            f"transformers loads {directory} incompletely: {len(missing)} weight(s) missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} stored tensor(s) unused (e.g. {unexpected[:3]})"
        )
    return model


def compare_in_transformers(dir_source: str, dir_target: str, seed: int = 0) -> tuple[float, float]:
    """KL and top-1 agreement of the converted checkpoint (transformers + compressed-tensors)
    against the torchao source (transformers + torchao) on fixed random token ids."""
    import torch

    from pytorch_scripts_common import set_seed

    set_seed(seed)
    ckpt = checkpoint_reader.open_torchao_checkpoint(dir_source)
    quantized_3d = any(m["_type"] != "Tensor" and not p.endswith(".weight") for p, m in ckpt.params.items())
    # transformers' default grouped-mm experts kernel transposes the 3D weight, which torchao tensors do
    # not implement; its eager per-expert loop slices them (as quantize_hf_model_with_torchao loads them).
    kwargs = {"experts_implementation": "eager"} if quantized_3d else {}
    try:
        torchao_model = load_every_weight(dir_source, **kwargs)
    except IncompleteLoadError:
        raise
    except (RuntimeError, ValueError) as e:
        # e.g. torchao 0.18 cannot deserialize Float8Tensor with PerBlock activation kwargs.
        print(f"note: transformers cannot load the torchao checkpoint ({str(e).splitlines()[0][:200]});")
        print("      the reference is a high-precision model holding torchao's dequantized weights")
        torchao_model = dequantized_reference_model(dir_source)
    vocab = torchao_model.config.get_text_config().vocab_size
    token_ids = torch.randint(0, vocab, (2, 32))
    ref = next_token_logits(torchao_model, token_ids)
    del torchao_model
    ct_model = load_every_weight(dir_target)
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
        try:
            report.kl, report.top1_agreement = compare_in_transformers(dir_source, dir_target)
        except ExpertsNotLoadableError as e:
            console.print(f"transformers: KL not measured: {e}", markup=False)
    if report.kl is not None:
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
