"""The torchao → compressed-tensors tensor mapping (checkpoints are read by ``checkpoint_reader``).

A torchao checkpoint saved by transformers (``quant_method: torchao``) stores each quantized
parameter ``<module>.<param>`` as several plain tensors ``<module>._<param>_<part>`` (``qdata``,
``scale``, ``zero_point``, ``per_tensor_scale``) plus a JSON entry in the safetensors header
metadata under ``<module>.<param>`` that names the tensor subclass and its attributes. This module
maps each subclass to the tensor names, dtypes and layouts of compressed-tensors 0.17 (what vLLM's
compressed-tensors loader reads):

=========================================  ==========================  ===============================
torchao tensor (config)                    compressed-tensors format   tensors written per module
=========================================  ==========================  ===============================
Float8Tensor + act kwargs (fp8 dynamic)    float-quantized             weight (fp8), weight_scale (f32)
Float8Tensor, no act kwargs (fp8 w-only)   naive-quantized             weight (fp8), weight_scale (f32)
Int8Tensor + act kwargs (W8A8)             int-quantized               weight (i8), weight_scale (f32)
Int8Tensor, no act kwargs (W8A16)          pack-quantized (8 bit)      weight_packed (i32), weight_scale,
                                                                       weight_shape (i64 [2])
IntxUnpackedToInt8Tensor (int4 w-only)     pack-quantized (4 bit)      weight_packed (i32), weight_scale,
                                                                       weight_shape, [weight_zero_point]
NVFP4Tensor (nvfp4 weight-only)            nvfp4-pack-quantized        weight_packed (u8), weight_scale
                                                                       (fp8, un-swizzled),
                                                                       weight_global_scale (f32 [1])
=========================================  ==========================  ===============================

NVFP4 global scale: torchao multiplies (``w = q * scale_e4m3 * per_tensor_scale``);
compressed-tensors and vLLM divide (``w = q * scale_e4m3 / weight_global_scale``), so the converter
writes ``weight_global_scale = 1 / per_tensor_scale`` (``1.0`` when torchao has no per-tensor
scale). ``1 / (1 / p)`` is not always ``p`` in float32, so NVFP4 is compared with a tolerance.

FP8 dynamic activations: torchao's activation lower bound (``hp_value_lb``; the fp8 recipe sets 1e-12
on CPU against NaN from all-zero rows) has no compressed-tensors field; bounds up to 2**-9 are dropped
because vLLM floors the scale at least as high itself (see ``FP8_ACTIVATION_LB_MAX``), larger bounds
and upper bounds are refused.

MoE: transformers holds routed experts as fused 3D parameters (``mlp.experts.gate_up_proj``
[E, 2I, H], ``mlp.experts.down_proj`` [E, H, I]) and most architectures' checkpoints store them per
expert, under names of their own (Qwen3-MoE ``mlp.experts.<e>.gate_proj.weight``, Mixtral
``block_sparse_moe.experts.<e>.w1.weight``). compressed-tensors schemes apply to 2D Linear weights,
and both vLLM's expert loaders and transformers' compressed-tensors loader read quantized experts
per expert, so quantized 3D experts are unfused into the per-expert weights transformers itself
would save (``checkpoint_names.CheckpointNaming.expert_slices``: names and the rows each holds).
Architectures whose checkpoints keep experts fused (GraniteMoe's ``input_linear``, gpt-oss) have no
per-expert names: their quantized 3D experts are refused. Unquantized experts are copied as stored.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from typing import Any

import numpy as np
import torch

from hf_torchao_vllm.conversion.checkpoint_names import ExpertSlice
from hf_torchao_vllm.conversion.safetensors_writer import active_repack_plan

__all__ = [
    "SUPPORTED_TORCHAO_TYPES",
    "CtScheme",
    "ModuleConversion",
    "build_quantization_config",
    "convert_parameter",
]

# The torchao tensor subclasses this converter maps (name -> what it becomes).
SUPPORTED_TORCHAO_TYPES = {
    "Float8Tensor": "FP8 (dynamic per-row / per-tensor / 1x128-128x128 block, or weight-only)",
    "Int8Tensor": "int8 W8A8 (int-quantized) or W8A16 (pack-quantized)",
    "IntxUnpackedToInt8Tensor": "intN weight-only, e.g. int4 W4A16 (pack-quantized)",
    "NVFP4Tensor": "NVFP4 weight-only (nvfp4-pack-quantized, NVFP4A16)",
    "MXTensor": "MXFP8 / MXFP4 (mxfp8-quantized / mxfp4-pack-quantized)",
}
# Subclasses torchao can save that have no compressed-tensors equivalent here, with the reason.
UNSUPPORTED_TORCHAO_TYPES = {
    "Int4Tensor": "its zero point lives in the float domain and its packing is mslk-specific; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
    "Int4TilePackedTo4dTensor": "its tile packing is a CUDA tinygemm layout; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
    "Int4PlainInt32Tensor": "its zero point lives in the float domain; "
    "quantize with IntxWeightOnlyConfig(weight_dtype=torch.int4) instead",
}


def _supported_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in SUPPORTED_TORCHAO_TYPES.items())


# --------------------------------------------------------------------------------------------
# Schemes and per-parameter conversion
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CtScheme:
    """A compressed-tensors scheme without targets: ``weights`` / ``input_activations`` are
    ``QuantizationArgs`` dicts stored as sorted JSON so schemes hash and group; ``label`` is a
    short human name (e.g. ``FP8_DYNAMIC``)."""

    label: str
    format: str
    weights_json: str
    input_activations_json: str | None = None

    def to_config_group(self, targets: list[str]) -> dict[str, Any]:
        group = {
            "targets": targets,
            "weights": json.loads(self.weights_json),
            "input_activations": None
            if self.input_activations_json is None
            else json.loads(self.input_activations_json),
            "output_activations": None,
            "format": self.format,
        }
        return group


def _args(**kwargs: Any) -> str:
    return json.dumps(kwargs, sort_keys=True)


@dataclasses.dataclass
class ModuleConversion:
    """The compressed-tensors tensors of one quantized module, and its scheme."""

    module: str
    scheme: CtScheme
    tensors: dict[str, torch.Tensor]


class NoEquivalentError(ValueError):
    """A torchao tensor that compressed-tensors has no format for (a limitation, not a bad input)."""


def _unsupported(param: str, type_name: str, why: str) -> NoEquivalentError:
    return NoEquivalentError(
        f"tensor {param!r} is a torchao {type_name}, which has no compressed-tensors equivalent in this "
        f"converter: {why}. Supported: {_supported_help()}"
    )


def _granularity_type(kwargs: dict[str, Any] | None) -> tuple[str | None, Any]:
    if kwargs is None:
        return None, None
    gran = kwargs["_data"].get("granularity")
    if gran is None:
        return None, None
    return gran["_type"], gran.get("_data", {})


def _weight_strategy(param: str, shape: tuple[int, ...], block_size: list[int]) -> dict[str, Any]:
    """compressed-tensors strategy args for a torchao ``block_size`` over the last two dims."""
    rows, cols = shape[-2], shape[-1]
    block_rows, block_cols = block_size[-2], block_size[-1]
    if any(b != 1 for b in block_size[:-2]):
        raise ValueError(f"{param!r}: block_size {block_size} spans experts; only per-expert scales map")
    if block_rows == 1 and block_cols == cols:
        return {"strategy": "channel"}
    if block_rows == rows and block_cols == cols:
        return {"strategy": "tensor"}
    if block_rows == 1:
        return {"strategy": "group", "group_size": block_cols}
    if rows % block_rows or cols % block_cols:
        raise ValueError(f"{param!r}: block {block_rows}x{block_cols} does not tile shape {shape}")
    return {"strategy": "block", "block_structure": [block_rows, block_cols]}


# torchao's ``hp_value_lb`` (``activation_value_lb`` of Float8DynamicActivationFloat8WeightConfig)
# clamps each activation block's max |x| from below before ``scale = max|x| / 448``; the fp8 recipe
# sets 1e-12 on CPU so that an all-zero row gets a finite scale instead of 0 / 0 = NaN. It only touches
# activations (torchao quantizes the weight without it), and compressed-tensors has no field for
# it. None is needed for a bound <= 2**-9: vLLM's QuantFP8 (the input quantization of its fp8
# linear kernels) floors the dynamic scale at 1 / (448 * 512), i.e. max |x| at 2**-9 (vllm 0.32,
# model_executor/layers/quantization/input_quant_fp8.py, forward_native), and max(max(a, lb), 2**-9) ==
# max(a, 2**-9) for every a when lb <= 2**-9: vLLM computes the same scales with or without it.
# compressed-tensors' own dynamic quantization (transformers) only replaces a zero scale by an eps;
# it differs from torchao-with-the-bound only on blocks with 0 < max |x| < lb (an all-zero block
# quantizes to zeros either way). A larger lower bound, or any upper bound (it clips outliers),
# changes vLLM's result and is refused.
FP8_ACTIVATION_LB_MAX = 2.0**-9


def _activation_clamp_problem(lower: Any, upper: Any) -> str | None:
    """Why torchao's fp8 activation clamp ``(hp_value_lb, hp_value_ub)`` cannot be dropped, or None."""
    if upper is not None:
        return f"an activation upper bound (hp_value_ub={upper!r}) clips activations"
    if lower is None:
        return None
    if not isinstance(lower, (int, float)) or isinstance(lower, bool) or lower != lower:
        return f"activation lower bound hp_value_lb={lower!r} is not a number"
    if lower > FP8_ACTIVATION_LB_MAX:
        return (
            f"activation lower bound hp_value_lb={lower!r} is above {FP8_ACTIVATION_LB_MAX:g} "
            "(vLLM's own floor on max |x|), so vLLM would quantize small activations differently"
        )
    return None


def _float8(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    qdata, scale = parts["qdata"], parts["scale"]
    if qdata.dtype != torch.float8_e4m3fn:
        raise _unsupported(param, "Float8Tensor", f"qdata dtype {qdata.dtype} (only float8_e4m3fn maps)")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    weights = _args(num_bits=8, type="float", symmetric=True, dynamic=False, **strategy)
    act_kwargs = data.get("act_quant_kwargs")
    if act_kwargs is None:
        scheme = CtScheme("FP8_WEIGHT_ONLY", "naive-quantized", weights)
    else:
        act = act_kwargs["_data"]
        problem = _activation_clamp_problem(act.get("hp_value_lb"), act.get("hp_value_ub"))
        if problem is not None:
            raise _unsupported(param, "Float8Tensor", problem)
        gran, gran_data = _granularity_type(act_kwargs)
        if gran == "PerRow":
            input_args = _args(num_bits=8, type="float", symmetric=True, dynamic=True, strategy="token")
            label = "FP8_DYNAMIC"
        elif gran == "PerTensor":
            input_args = _args(num_bits=8, type="float", symmetric=True, dynamic=True, strategy="tensor")
            label = "FP8_PER_TENSOR_DYNAMIC"
        elif gran == "PerBlock" and list(gran_data.get("block_size", [])[:1]) == [1]:
            group = gran_data["block_size"][-1]
            input_args = _args(
                num_bits=8, type="float", symmetric=True, dynamic=True, strategy="group", group_size=group
            )
            label = "FP8_BLOCK"
        else:
            raise _unsupported(param, "Float8Tensor", f"activation granularity {gran} {gran_data}")
        scheme = CtScheme(label, "float-quantized", weights, input_args)
    if strategy["strategy"] == "tensor":
        scale = scale.reshape(*scale.shape[:-2], 1)  # [.., 1, 1] -> [.., 1]: per-tensor scale
    return scheme, {"weight": qdata, "weight_scale": scale}


def _is_symmetric(zero_point: torch.Tensor | None) -> bool:
    """torchao stores zero points even for symmetric mappings; all zeros means symmetric."""
    return zero_point is None or not bool(zero_point.any())


def _pack_int32(values: torch.Tensor, num_bits: int, packed_dim: int = 1) -> torch.Tensor:
    """compressed-tensors' ``pack_to_int32`` layout: value ``i`` of each group of ``32 // num_bits``
    along ``packed_dim`` sits in bits ``[i * num_bits, (i + 1) * num_bits)``, offset by
    ``2 ** (num_bits - 1)`` to unsigned. For 8 and 4 bits along rows that is, on a little-endian
    machine, the offset bytes (or nibble pairs, low nibble first) viewed as int32: one uint8 copy
    (8 bits: none while a ``RepackPlan`` is active, the writer computes it) instead of
    compressed-tensors' int32 intermediates (4-5x the tensor), which matters for the streaming memory
    bound. ``values`` is never modified. Other cases use compressed-tensors' own function.
    Validation unpacks with compressed-tensors, so both paths are checked bit for bit.
    """
    import sys

    cols = values.shape[-1]
    if packed_dim == 1 and values.ndim == 2 and sys.byteorder == "little" and cols % (32 // num_bits) == 0:
        # v + 2**(n-1) of a two's-complement n-bit value is its low n bits with the top one flipped.
        as_bytes = values.contiguous().view(torch.uint8)
        if num_bits == 8:
            plan = active_repack_plan()
            if plan is not None:  # computed while the shard is written, see RepackPlan
                return plan.defer_xor(as_bytes, 0x80).view(torch.int32)
            # NumPy runs it on one thread: torch's two-thread kernel was 3x slower on a loaded
            # 2-core machine (its threads wait for each other at every call).
            return torch.from_numpy(np.bitwise_xor(as_bytes.numpy(), 0x80)).view(torch.int32)
        if num_bits == 4:
            low = (as_bytes[:, 0::2] ^ 0x08) & 0x0F
            high = ((as_bytes[:, 1::2] ^ 0x08) & 0x0F) << 4
            return (low | high).contiguous().view(torch.int32)
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    return pack_to_int32(values.contiguous(), num_bits, packed_dim=packed_dim)


def _int8(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    qdata, scale = parts["qdata"], parts["scale"]
    if not _is_symmetric(parts.get("zero_point")):
        raise _unsupported(param, "Int8Tensor", "non-zero zero points (asymmetric int8 weights)")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    if strategy["strategy"] not in ("channel", "group"):
        raise _unsupported(param, "Int8Tensor", f"weight granularity {strategy}")
    if scale.ndim == qdata.ndim - 1:
        scale = scale.unsqueeze(-1)
    weights = _args(num_bits=8, type="int", symmetric=True, dynamic=False, **strategy)
    act_kwargs = data.get("act_quant_kwargs")
    if act_kwargs is None:
        scheme = CtScheme(f"W8A16_{strategy['strategy'].upper()}", "pack-quantized", weights)
        tensors = {
            "weight_packed": _pack_int32(qdata, 8),
            "weight_scale": scale,
            "weight_shape": torch.tensor(qdata.shape[-2:], dtype=torch.int64),
        }
        return scheme, tensors
    act = act_kwargs["_data"]
    gran, _ = _granularity_type(act_kwargs)
    if gran != "PerRow":
        raise _unsupported(param, "Int8Tensor", f"activation granularity {gran} (only per-row/token maps)")
    symmetric = act.get("mapping_type", {}).get("_data", "SYMMETRIC") == "SYMMETRIC"
    input_args = _args(num_bits=8, type="int", symmetric=symmetric, dynamic=True, strategy="token")
    label = "W8A8_INT8" if symmetric else "W8A8_INT8_ASYM_ACT"
    return CtScheme(label, "int-quantized", weights, input_args), {
        "weight": qdata,
        "weight_scale": scale,
    }


_INTX_BITS = {f"int{b}": b for b in range(1, 9)}


def _intx(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    data = meta["_data"]
    if data.get("activation_quantization") is not None:
        raise _unsupported(
            param, "IntxUnpackedToInt8Tensor", "activation quantization (only weight-only maps)"
        )
    target = data["target_dtype"]["_data"]
    if target not in _INTX_BITS:
        raise _unsupported(param, "IntxUnpackedToInt8Tensor", f"target dtype {target}")
    num_bits = _INTX_BITS[target]
    qdata, scale, zero_point = parts["qdata"], parts["scale"], parts.get("zero_point")
    strategy = _weight_strategy(param, tuple(qdata.shape), data["block_size"])
    if strategy["strategy"] not in ("channel", "group"):
        raise _unsupported(param, "IntxUnpackedToInt8Tensor", f"weight granularity {strategy}")
    symmetric = _is_symmetric(zero_point)
    if scale.ndim == qdata.ndim - 1:
        scale = scale.unsqueeze(-1)
    weights = _args(num_bits=num_bits, type="int", symmetric=symmetric, dynamic=False, **strategy)
    label = f"W{num_bits}A16" + ("" if symmetric else "_ASYM")
    tensors = {
        "weight_packed": _pack_int32(qdata, num_bits),
        "weight_scale": scale,
        "weight_shape": torch.tensor(qdata.shape[-2:], dtype=torch.int64),
    }
    if not symmetric:
        zp = zero_point.reshape(scale.shape).to(torch.int8)
        tensors["weight_zero_point"] = _pack_int32(zp, num_bits, packed_dim=0)
    return CtScheme(label, "pack-quantized", weights), tensors


def _nvfp4(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    from torchao.prototype.mx_formats.utils import from_blocked

    data = meta["_data"]
    if data.get("act_quant_kwargs") is not None:
        raise _unsupported(
            param,
            "NVFP4Tensor",
            "dynamic NVFP4 activations (compressed-tensors NVFP4 needs a calibrated input_global_scale)",
        )
    if data.get("block_size", 16) != 16:
        raise _unsupported(param, "NVFP4Tensor", f"block size {data.get('block_size')} (NVFP4 uses 16)")
    qdata, scale = parts["qdata"], parts["scale"]
    if qdata.ndim != 2:
        raise _unsupported(param, "NVFP4Tensor", "3D (expert) NVFP4 weights")
    rows, cols = qdata.shape[0], qdata.shape[1] * 2
    if data.get("is_swizzled_scales", False):
        scale = from_blocked(scale, rows, cols // 16)
    scale = scale.reshape(rows, cols // 16).contiguous()
    per_tensor = parts.get("per_tensor_scale")
    global_scale = (
        torch.ones(1, dtype=torch.float32)
        if per_tensor is None
        else (1.0 / per_tensor.to(torch.float32)).reshape(1)
    )
    weights = _args(
        num_bits=4,
        type="float",
        symmetric=True,
        dynamic=False,
        strategy="tensor_group",
        group_size=16,
        scale_dtype="torch.float8_e4m3fn",
        zp_dtype="torch.float8_e4m3fn",
    )
    tensors = {
        "weight_packed": qdata.contiguous(),
        "weight_scale": scale,
        "weight_global_scale": global_scale,
    }
    return CtScheme("NVFP4A16", "nvfp4-pack-quantized", weights), tensors


MX_BLOCK = 32


def _mx(param: str, meta: dict[str, Any], parts: dict[str, torch.Tensor]) -> tuple[CtScheme, dict]:
    """torchao ``MXTensor`` -> compressed-tensors MXFP8 / MXFP4: the same element bytes (fp4 packed two
    per byte, low nibble first, as NVFP4) and the e8m0 block scales as their uint8 biased exponents,
    un-swizzled with torchao's ``from_blocked``. Dynamic MX activations keep their args, which cannot
    say how scales round: see ``MX_ACTIVATION_ROUNDING``."""
    from torchao.prototype.mx_formats.utils import from_blocked

    data = meta["_data"]
    elem = data["elem_dtype"]["_data"]
    if data.get("block_size", MX_BLOCK) != MX_BLOCK or elem not in ("float8_e4m3fn", "float4_e2m1fn_x2"):
        raise _unsupported(
            param, "MXTensor", f"element {elem} / block {data.get('block_size')} (MXFP8 / MXFP4 use 32)"
        )
    qdata, scale = parts["qdata"], parts["scale"].view(torch.uint8)
    if qdata.ndim != 2:
        raise _unsupported(param, "MXTensor", "3D (expert) MX weights")
    bits = 8 if elem == "float8_e4m3fn" else 4
    rows, cols = qdata.shape[0], qdata.shape[1] * (8 // bits)
    if data.get("is_swizzled_scales", False):
        scale = from_blocked(scale, rows, cols // MX_BLOCK)
    scale = scale.reshape(rows, cols // MX_BLOCK).contiguous()
    args = {"num_bits": bits, "type": "float", "symmetric": True, "strategy": "group", "group_size": MX_BLOCK}
    args |= {"scale_dtype": "torch.uint8", "zp_dtype": "torch.uint8"}
    weights = _args(dynamic=False, **args)
    has_act = data.get("act_quant_kwargs") is not None
    input_args = _args(dynamic=True, **args) if has_act else None
    label = f"MXFP{bits}" + ("" if has_act else "A16")
    if bits == 8:
        return CtScheme(label, "mxfp8-quantized", weights, input_args), {
            "weight": qdata,
            "weight_scale": scale,
        }
    tensors = {"weight_packed": qdata.contiguous().view(torch.uint8), "weight_scale": scale}
    return CtScheme(label, "mxfp4-pack-quantized", weights, input_args), tensors


# compressed-tensors 0.17 rounds a dynamic MX activation scale EVEN (amax to the nearest power of two
# at the FP4 mantissa, then floor: utils/mxfp_utils.py generate_mx_scales) and QuantizationArgs has no
# field for another rule; torchao's MX configs default to RCEIL (ceil(log2(amax / 6))). The two differ
# by 2x in blocks whose amax mantissa lies in (1.5, 1.75): 14-23% of activation blocks on the embedded
# and tiny test models. With EVEN on both sides the KL is 0.
MX_ACTIVATION_ROUNDING = (
    "torchao rounds this checkpoint's MX activation scales {mode} and compressed-tensors always EVEN, so "
    "converted activations differ by 2x in some blocks (weights are exact)"
)


def conversion_notes(params: dict[str, dict[str, Any]]) -> list[str]:
    """What the converted checkpoint cannot carry over exactly (said before converting)."""
    modes = set()
    for meta in params.values():
        if meta["_type"] != "MXTensor":
            continue
        act = meta["_data"].get("act_quant_kwargs")
        act_data = act.get("_data") if isinstance(act, dict) else None
        scaling = act_data.get("scaling_mode") if isinstance(act_data, dict) else None
        mode = scaling.get("_data") if isinstance(scaling, dict) else None
        if isinstance(mode, str) and mode != "EVEN":
            modes.add(mode)
    return [MX_ACTIVATION_ROUNDING.format(mode=mode) for mode in sorted(modes)]


_CONVERTERS = {
    "MXTensor": _mx,
    "Float8Tensor": _float8,
    "Int8Tensor": _int8,
    "IntxUnpackedToInt8Tensor": _intx,
    "NVFP4Tensor": _nvfp4,
}


def _rows_of_part(t: torch.Tensor, piece: ExpertSlice, num_rows: int) -> torch.Tensor:
    """The rows of one expert piece in a stored 3D part: ``qdata`` rows as they are, a part with
    fewer rows (a scale per block of rows) scaled down, when the piece's rows fall on its blocks."""
    x = t[piece.expert]
    start, stop = piece.start * x.shape[0], piece.stop * x.shape[0]
    if start % num_rows or stop % num_rows:
        raise ValueError(
            f"{piece.name}: rows {piece.start}:{piece.stop} of {num_rows} do not fall on the "
            f"{num_rows // x.shape[0]}-row blocks of a part with {x.shape[0]} rows"
        )
    return x[start // num_rows : stop // num_rows].contiguous()


def convert_parameter(
    param: str,
    meta: dict[str, Any],
    parts: dict[str, torch.Tensor],
    expert_slices: list[ExpertSlice] | None = None,
) -> list[ModuleConversion]:
    """compressed-tensors tensors for one quantized torchao parameter (unfused when it is 3D).

    ``expert_slices``: for a fused 3D parameter, the per-expert weights transformers stores it as
    (``TorchaoCheckpoint.expert_slices``); None when it stores the experts fused.
    ``parts`` is never modified (``ShardReader`` views are read-only memory maps).
    """
    type_name = meta["_type"]
    if type_name in UNSUPPORTED_TORCHAO_TYPES:
        raise _unsupported(param, type_name, UNSUPPORTED_TORCHAO_TYPES[type_name])
    if type_name not in _CONVERTERS:
        raise ValueError(
            f"tensor {param!r} has torchao type {type_name!r}, which this converter does not know. "
            f"Supported: {_supported_help()}"
        )
    qdata = parts["qdata"]
    if qdata.ndim == 2:
        if not param.endswith(".weight"):
            raise ValueError(f"quantized 2D tensor {param!r} is not a '.weight'; cannot name its module")
        scheme, tensors = _CONVERTERS[type_name](param, meta, parts)
        return [ModuleConversion(param.removesuffix(".weight"), scheme, tensors)]
    if qdata.ndim != 3 or ".experts." not in param + ".":
        raise ValueError(
            f"quantized tensor {param!r} has shape {tuple(qdata.shape)}; only 2D or 3D experts map"
        )
    if expert_slices is None:
        raise _unsupported(
            param,
            type_name,
            "transformers stores this architecture's experts fused on disk, and compressed-tensors "
            "schemes apply to per-expert Linear weights; keep the experts in bf16 (--skip=experts)",
        )
    # 3D experts: cut each stored part into the per-expert weights, then convert each 2D piece.
    num_experts, num_rows = qdata.shape[0], qdata.shape[1]
    data = dict(meta["_data"])
    if "block_size" in data and isinstance(data["block_size"], list) and len(data["block_size"]) == 3:
        data["block_size"] = data["block_size"][1:]
    meta_2d = {**meta, "_data": data}
    block = data.get("block_size")
    pieces_per_expert = len(expert_slices) // num_experts
    if isinstance(block, list) and block[0] == num_rows and pieces_per_expert > 1:
        raise _unsupported(param, type_name, "a per-tensor scale shared by fused gate and up projections")
    conversions = []
    for piece in expert_slices:
        parts_2d = {}
        for key, value in parts.items():
            if value.ndim != 3 or value.shape[0] != num_experts:
                raise ValueError(
                    f"{param!r}: part {key!r} of shape {tuple(value.shape)} cannot be split per expert"
                )
            parts_2d[key] = _rows_of_part(value, piece, num_rows)
        rows_2d = parts_2d["qdata"].shape[0]
        if isinstance(block, list) and block[0] not in (1, rows_2d) and rows_2d % block[0]:
            raise ValueError(f"{param!r}: unfused rows {rows_2d} are not a multiple of block {block}")
        module = piece.name.removesuffix(".weight")
        scheme, tensors = _CONVERTERS[type_name](piece.name, meta_2d, parts_2d)
        conversions.append(ModuleConversion(module, scheme, tensors))
    return conversions


# --------------------------------------------------------------------------------------------
# config_groups, targets and ignore
# --------------------------------------------------------------------------------------------


def _generalize(name: str) -> str:
    """Module name -> anchored regex with every numeric path component (layer, expert) wildcarded."""
    pieces = name.split(".")
    return "re:^" + r"\.".join(r"\d+" if p.isdigit() else re.escape(p) for p in pieces) + "$"


def compress_targets(members: set[str], all_modules: set[str]) -> list[str]:
    """Targets that match exactly ``members`` among ``all_modules``.

    Each member's name with its numeric components wildcarded becomes a regex when that regex
    matches no module outside ``members``; otherwise the exact name is used.
    """
    targets: list[str] = []
    covered: set[str] = set()
    for name in sorted(members):
        if name in covered:
            continue
        pattern = _generalize(name)
        regex = re.compile(pattern.removeprefix("re:"))
        matched = {m for m in all_modules if regex.match(m)}
        if matched <= members:
            targets.append(pattern)
            covered |= matched
        else:
            targets.append(name)
            covered.add(name)
    return targets


# --------------------------------------------------------------------------------------------
# Scheme mapping checked against compressed-tensors' own presets
# --------------------------------------------------------------------------------------------

ANY = object()  # a field whose value the scheme chooses (e.g. the group size torchao used)
# Scheme label -> (compressed-tensors preset, deviations): per section (weights, input_activations)
# the fields that legitimately differ from the preset, with their value (or ANY); a section mapped
# to None is absent in our scheme although the preset has it.
SCHEME_PRESETS: dict[str, tuple[str, dict[str, dict[str, Any] | None]]] = {
    "FP8_DYNAMIC": ("FP8_DYNAMIC", {}),
    # torchao PerTensor activations are dynamic; the FP8 preset calibrates a static scale
    "FP8_PER_TENSOR_DYNAMIC": ("FP8", {"input_activations": {"dynamic": True}}),
    "FP8_BLOCK": ("FP8_BLOCK", {}),
    # torchao Float8WeightOnlyConfig: FP8_DYNAMIC's per-channel weights without activation quantization
    "FP8_WEIGHT_ONLY": ("FP8_DYNAMIC", {"input_activations": None}),
    "W8A8_INT8": ("W8A8", {}),
    # torchao activations with an asymmetric mapping (zero points per token)
    "W8A8_INT8_ASYM_ACT": ("W8A8", {"input_activations": {"symmetric": False}}),
    # torchao int8 weight-only is per row (channel); the W8A16 preset uses groups of 128
    "W8A16_CHANNEL": ("W8A16", {"weights": {"strategy": "channel", "group_size": None}}),
    "W8A16_GROUP": ("W8A16", {"weights": {"group_size": ANY}}),
    # torchao's intx group size, or one group spanning the row (compressed-tensors "channel"); _intx
    # refuses every other strategy
    "W4A16": ("W4A16", {"weights": {"group_size": ANY, "strategy": ANY}}),
    "W4A16_ASYM": ("W4A16_ASYM", {"weights": {"group_size": ANY, "strategy": ANY}}),
    "NVFP4A16": ("NVFP4A16", {}),
    "MXFP8": ("MXFP8", {}),
    "MXFP8A16": ("MXFP8A16", {}),
    "MXFP4": ("MXFP4", {}),
    "MXFP4A16": ("MXFP4A16", {}),
}
PRESET_FIELDS = (
    "num_bits", "type", "symmetric", "strategy", "group_size", "block_structure", "dynamic", "scale_dtype",
)  # fmt: skip


def _preset_of(label: str) -> tuple[str, dict[str, dict[str, Any] | None]]:
    if label in SCHEME_PRESETS:
        return SCHEME_PRESETS[label]
    bits = re.fullmatch(r"W(\d)A16(_ASYM)?", label)
    if bits:  # intN weight-only: W4A16's layout with other bit widths
        base = "W4A16_ASYM" if bits.group(2) else "W4A16"
        return base, {"weights": {"num_bits": int(bits.group(1)), "group_size": ANY, "strategy": ANY}}
    raise AssertionError(f"scheme {label!r} has no compressed-tensors preset to check against")


def preset_mismatches(scheme: CtScheme) -> list[str]:
    """Fields of ``scheme``'s weights / input_activations args that differ from its preset's beyond the
    stated deviations (compared as compressed-tensors ``QuantizationArgs``, after its validation)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    preset_name, deviations = _preset_of(scheme.label)
    preset = PRESET_SCHEMES[preset_name]
    problems = []
    for section, ours_json in (
        ("weights", scheme.weights_json),
        ("input_activations", scheme.input_activations_json),
    ):
        expected = preset.get(section)
        if section in deviations and deviations[section] is None:
            expected = None
        if (expected is None) != (ours_json is None):
            problems.append(
                f"{section}: {'absent' if ours_json is None else 'present'} in ours, not in {preset_name}"
            )
            continue
        if expected is None:
            continue
        allowed = deviations.get(section) or {}
        with warnings.catch_warnings():  # "No observer is used for dynamic quant": not what is compared
            warnings.simplefilter("ignore", UserWarning)
            ours = QuantizationArgs(**json.loads(ours_json))
            fixed = {k: v for k, v in allowed.items() if v is not ANY}
            expected = QuantizationArgs(**{**expected.model_dump(), **fixed})
        for field in PRESET_FIELDS:
            if allowed.get(field) is ANY:
                continue
            got, want = getattr(ours, field), getattr(expected, field)
            if got != want:
                problems.append(f"{section}.{field} {got!r} != {preset_name}'s {want!r}")
    return problems


def check_against_preset(scheme: CtScheme) -> None:
    """``AssertionError`` when the converter wrote args its preset does not have (a converter bug)."""
    problems = preset_mismatches(scheme)
    if problems:
        raise AssertionError(
            f"scheme {scheme.label} does not match compressed-tensors' preset: {'; '.join(problems)}"
        )


def build_quantization_config(
    module_schemes: dict[str, CtScheme], ignore: list[str], compressed_tensors_version: str
) -> dict[str, Any]:
    """The ``quantization_config`` dict (``quant_method: compressed-tensors``) for config.json."""
    by_scheme: dict[CtScheme, set[str]] = {}
    for module, scheme in module_schemes.items():
        by_scheme.setdefault(scheme, set()).add(module)
    for scheme in by_scheme:
        check_against_preset(scheme)
    all_modules = set(module_schemes) | set(ignore)
    groups = {}
    ordered = sorted(by_scheme.items(), key=lambda kv: (kv[0].label, min(kv[1])))
    for i, (scheme, members) in enumerate(ordered):
        groups[f"group_{i}"] = scheme.to_config_group(compress_targets(members, all_modules))
    formats = {s.format for s in by_scheme}
    return {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "version": compressed_tensors_version,
    }
