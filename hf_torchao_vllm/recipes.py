"""Quantization recipes (name -> torchao config) and generic module selection for HF causal LMs.

A *recipe* maps to one torchao ``AOBaseConfig`` for the current device. A *selector* decides, from
module and parameter names and types only (never a model name), which weights get the recipe:

- quantizable weights: ``nn.Linear.weight`` and fused 3D expert parameters
  (``[num_experts, out, in]``, e.g. Qwen3-MoE ``mlp.experts.gate_up_proj`` / ``down_proj``);
- never quantized unless asked: routers (``...gate`` / ``...router`` modules, which pick experts)
  and the output embedding (``lm_head``); input embeddings are never ``nn.Linear``.

The selection becomes a ``FqnToConfig`` whose keys are ``re:`` regexes over module names (for
``nn.Linear``) or parameter names (for 3D expert weights), with layer indices generalised to
``\\d+`` when that matches exactly the selected set; that config is what transformers'
``TorchAoConfig`` stores in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from contextlib import contextmanager

import torch

# Modules that route tokens to experts, e.g. "model.layers.0.mlp.gate" (Qwen/Mixtral routers),
# "mlp.shared_expert_gate" (Qwen2-MoE), "block_sparse_moe.router". Not "mlp.gate_proj".
ROUTER_NAME_REGEX = re.compile(r"(^|\.)(\w+_)?(gate|router)$")
ATTENTION_COMPONENT_REGEX = re.compile(r"attn|attention")
MLP_COMPONENT_REGEX = re.compile(r"mlp|ffn|feed_forward|experts?|moe")
EXPERTS_COMPONENT_REGEX = re.compile(r"^experts$")

MODULE_SELECTORS = ("all", "experts_only", "mlp_only", "skip_attention")
FP8_GRANULARITIES = ("per_row", "per_tensor", "a1x128_w128x128")


@dataclasses.dataclass(frozen=True)
class QuantTarget:
    """One weight that a recipe may quantize.

    ``name`` is the module name for ``nn.Linear`` weights and the parameter name for 3D expert
    weights (the key form torchao's ``FqnToConfig`` and transformers' loader expect).
    """

    name: str
    param_name: str  # full parameter name, e.g. "model.layers.0.mlp.up_proj.weight"
    shape: tuple[int, ...]
    is_expert: bool
    is_3d: bool


@dataclasses.dataclass(frozen=True)
class Selection:
    selected: list[QuantTarget]
    skipped: dict[str, str]  # target name -> reason


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    # (divisor of the input dim, why); None when any shape works
    input_dim_divisor: Callable[[RecipeOptions], int | None]
    supports_3d: bool
    cuda_only_reason: str | None = None  # None: runs on CPU too


@dataclasses.dataclass(frozen=True)
class RecipeOptions:
    granularity: str = "per_row"
    group_size: int = 128
    fp8_emulation_on_cpu: bool = False


def _none_divisor(options: RecipeOptions) -> int | None:
    return None


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe(
            "none", "no quantization (bf16 baseline through the same save/reload path)", _none_divisor, True
        ),
        Recipe("int8_weight_only", "int8 weights, per-row scales; bf16 activations", _none_divisor, True),
        Recipe(
            "int8_dynamic_act_int8_weight",
            "int8 weights per-row, int8 activations per-token (dynamic)",
            _none_divisor,
            True,
        ),
        Recipe(
            "int4_weight_only",
            "int4 weights, per-group scales (CPU: IntxWeightOnlyConfig int4; CUDA: Int4WeightOnlyConfig)",
            lambda o: o.group_size,
            False,
        ),
        Recipe(
            "fp8",
            "float8 e4m3 weights and dynamic activations (per_row | per_tensor | a1x128_w128x128)",
            lambda o: 128 if o.granularity == "a1x128_w128x128" else 16,
            True,
        ),
        Recipe("fp8_weight_only", "float8 e4m3 weights per-row; bf16 activations", _none_divisor, True),
        Recipe(
            "mxfp8", "MX float8 e4m3 weights+activations, 32-element blocks, e8m0 scales", lambda o: 32, False
        ),
        Recipe(
            "mxfp4", "MX float4 e2m1 weights+activations, 32-element blocks, e8m0 scales", lambda o: 32, False
        ),
        Recipe(
            "nvfp4",
            "NVFP4 weights+dynamic activations, 16-element blocks, fp8 block scales + fp32 tensor scale",
            lambda o: 16,
            False,
            cuda_only_reason="torchao's NVFP4 dynamic-activation mode asserts an sm100+ GPU",
        ),
        Recipe(
            "nvfp4_weight_only",
            "NVFP4 weights (16-element blocks, fp8 block scales + fp32 tensor scale); bf16 activations",
            lambda o: 16,
            False,
        ),
    ]
}


def validate_recipe_options(recipe: str, options: RecipeOptions, device: torch.device) -> Recipe:
    """The ``Recipe`` for ``recipe``, or a ``ValueError`` naming valid choices / what runs here."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid recipes: {', '.join(RECIPES)}")
    if options.granularity not in FP8_GRANULARITIES:
        raise ValueError(
            f"unknown granularity {options.granularity!r}; valid: {', '.join(FP8_GRANULARITIES)} (for fp8)"
        )
    if not isinstance(options.group_size, int) or options.group_size <= 0:
        raise ValueError(f"group_size must be a positive int, got {options.group_size!r}")
    entry = RECIPES[recipe]
    if device.type != "cuda" and entry.cuda_only_reason is not None:
        raise ValueError(
            f"recipe {recipe!r} is not supported on {device.type}: {entry.cuda_only_reason}. "
            f"Recipes that run on {device.type}: {', '.join(cpu_capable_recipes(options))}"
        )
    if recipe == "fp8" and device.type != "cuda":
        if not options.fp8_emulation_on_cpu:
            raise ValueError(
                "recipe 'fp8' (dynamic float8 activations) is refused by torchao on CPU by a hardware "
                "check. Pass --fp8_emulation_on_cpu=True to bypass the check and emulate with CPU "
                "torch._scaled_mm (numerically correct, slow), or use one of: "
                f"{', '.join(cpu_capable_recipes(options))}"
            )
        if options.granularity == "a1x128_w128x128":
            raise ValueError(
                "fp8 granularity 'a1x128_w128x128' needs triton kernels (CUDA) even with emulation; on CPU "
                "use granularity per_row or per_tensor"
            )
    return entry


def cpu_capable_recipes(options: RecipeOptions | None = None) -> list[str]:
    names = [n for n, r in RECIPES.items() if r.cuda_only_reason is None]
    if options is None or not options.fp8_emulation_on_cpu:
        names.remove("fp8")
        names.append("fp8 (with --fp8_emulation_on_cpu=True)")
    return names


def make_torchao_config(recipe: str, options: RecipeOptions, device: torch.device):
    """The torchao ``AOBaseConfig`` of ``recipe`` on ``device`` (``None`` for ``none``)."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerBlock,
        PerGroup,
        PerRow,
        PerTensor,
    )
    from torchao.quantization.quantize_.common import KernelPreference

    on_cuda = device.type == "cuda"
    if recipe == "none":
        return None
    if recipe == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if recipe == "int8_dynamic_act_int8_weight":
        return Int8DynamicActivationInt8WeightConfig()
    if recipe == "int4_weight_only":
        if on_cuda:
            return Int4WeightOnlyConfig(group_size=options.group_size)
        # Int4WeightOnlyConfig has no CPU layout in torchao 0.18 (plain needs mslk, tile_packed needs
        # CUDA, plain_int32 is not implemented on CPU); the intx int4 tensor is CPU-capable and saves.
        return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(options.group_size))
    if recipe == "fp8":
        granularity = {
            "per_row": PerRow(),
            "per_tensor": PerTensor(),
            "a1x128_w128x128": [PerBlock([1, 128]), PerBlock([128, 128])],
        }[options.granularity]
        # CPU emulation: an all-zero activation row (e.g. the embedding of a padding_idx token such as
        # the embedded models' EOS) gives a zero per-row scale and 0/0 = NaN in torchao's torch
        # quantize path; a tiny lower bound on amax keeps the scale finite and does not change any
        # other row. On CUDA it stays None, which keeps torchao's MSLK quantize kernel eligible.
        return Float8DynamicActivationFloat8WeightConfig(
            granularity=granularity, activation_value_lb=None if on_cuda else 1e-12
        )
    if recipe == "fp8_weight_only":
        return Float8WeightOnlyConfig()
    if recipe in ("mxfp8", "mxfp4"):
        from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig

        elem_dtype = torch.float8_e4m3fn if recipe == "mxfp8" else torch.float4_e2m1fn_x2
        # CPU: emulated (dequantize + bf16 matmul); CUDA: AUTO picks the hardware kernel when present
        kernel = KernelPreference.AUTO if on_cuda else KernelPreference.EMULATED
        return MXDynamicActivationMXWeightConfig(
            activation_dtype=elem_dtype, weight_dtype=elem_dtype, kernel_preference=kernel
        )
    if recipe == "nvfp4":
        from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

        return NVFP4DynamicActivationNVFP4WeightConfig()
    if recipe == "nvfp4_weight_only":
        from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig

        return NVFP4WeightOnlyConfig()
    raise AssertionError(f"recipe {recipe!r} is registered but has no config")


@contextmanager
def maybe_bypass_fp8_hardware_check(enabled: bool):
    """Skip torchao's float8 dynamic-activation hardware check (CPU emulation, explicit opt-in only)."""
    if not enabled:
        yield
        return
    from unittest import mock

    with mock.patch("torchao.quantization.quant_api._check_hardware_support", lambda granularities: None):
        yield


def find_quant_targets(model: torch.nn.Module) -> tuple[list[QuantTarget], dict[str, str]]:
    """All weights a recipe could quantize, and the never-by-default ones (routers, lm_head) with reasons."""
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    candidates: list[QuantTarget] = []
    protected: dict[str, str] = {}
    for module_name, module in model.named_modules():
        components = module_name.split(".")
        in_experts = any(EXPERTS_COMPONENT_REGEX.match(c) for c in components)
        if isinstance(module, torch.nn.Linear):
            target = QuantTarget(
                name=module_name,
                param_name=f"{module_name}.weight",
                shape=tuple(module.weight.shape),
                is_expert=in_experts,
                is_3d=False,
            )
            if module is output_embeddings:
                protected[module_name] = "output embedding (lm_head); pass --quantize_lm_head=True to include"
            elif ROUTER_NAME_REGEX.search(module_name):
                protected[module_name] = "router / gate; pass --quantize_routers=True to include"
            candidates.append(target)
            continue
        is_router_module = "router" in type(module).__name__.lower() or bool(
            ROUTER_NAME_REGEX.search(module_name)
        )
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if is_router_module and param.dim() == 2:
                protected[full_name] = "router / gate; pass --quantize_routers=True to include"
                candidates.append(QuantTarget(full_name, full_name, tuple(param.shape), False, False))
            elif param.dim() == 3 and in_experts:
                # fused experts, [num_experts, out_features, in_features]
                candidates.append(QuantTarget(full_name, full_name, tuple(param.shape), True, True))
    return candidates, protected


def select_targets(
    model: torch.nn.Module,
    modules: str,
    skip: list[str],
    quantize_lm_head: bool = False,
    quantize_routers: bool = False,
) -> Selection:
    """Apply the module selector and ``skip`` regexes (``re.search`` on the target name)."""
    if modules not in MODULE_SELECTORS:
        raise ValueError(f"unknown module selector {modules!r}; valid: {', '.join(MODULE_SELECTORS)}")
    skip_regexes = []
    for pattern in skip:
        try:
            skip_regexes.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"--skip pattern {pattern!r} is not a valid regex: {error}") from error
    candidates, protected = find_quant_targets(model)
    selected, skipped = [], {}
    for target in candidates:
        components = target.name.split(".")
        in_attention = any(ATTENTION_COMPONENT_REGEX.search(c) for c in components)
        in_mlp = any(MLP_COMPONENT_REGEX.search(c) for c in components)
        reason = None
        if target.name in protected:
            is_lm_head = "lm_head" in protected[target.name]
            if (is_lm_head and not quantize_lm_head) or (not is_lm_head and not quantize_routers):
                reason = protected[target.name]
        if reason is None and modules == "experts_only" and not target.is_expert:
            reason = "not an expert weight (--modules=experts_only)"
        elif reason is None and modules == "mlp_only" and not in_mlp:
            reason = "not in an MLP / MoE block (--modules=mlp_only)"
        elif reason is None and modules == "skip_attention" and in_attention:
            reason = "attention (--modules=skip_attention)"
        if reason is None:
            for pattern in skip_regexes:
                if pattern.search(target.name):
                    reason = f"matches --skip {pattern.pattern!r}"
                    break
        if reason is None:
            selected.append(target)
        else:
            skipped[target.name] = reason
    return Selection(selected=selected, skipped=skipped)


def check_divisibility(recipe: Recipe, options: RecipeOptions, selected: list[QuantTarget]) -> None:
    """A ``ValueError`` listing every selected weight whose dimensions the recipe's blocks do not divide."""
    divisor = recipe.input_dim_divisor(options)
    bad = []
    for target in selected:
        out_features, in_features = target.shape[-2], target.shape[-1]
        if divisor is not None and in_features % divisor != 0:
            bad.append(f"{target.name} {list(target.shape)} (in_features {in_features} % {divisor} != 0)")
        if recipe.name == "fp8" and options.granularity == "a1x128_w128x128" and out_features % 128 != 0:
            bad.append(f"{target.name} {list(target.shape)} (out_features {out_features} % 128 != 0)")
        elif recipe.name in ("nvfp4", "nvfp4_weight_only") and out_features % 16 != 0:
            bad.append(f"{target.name} {list(target.shape)} (out_features {out_features} % 16 != 0)")
    if bad:
        fix = "use a smaller --group_size that divides them, or " if recipe.name == "int4_weight_only" else ""
        raise ValueError(
            f"recipe {recipe.name!r} cannot quantize {len(bad)} selected weight(s): {'; '.join(bad[:8])}"
            f"{' ...' if len(bad) > 8 else ''}. Fix: {fix}exclude them with --skip=<regex>."
        )


def check_3d_support(recipe: Recipe, selected: list[QuantTarget]) -> None:
    three_d = [t.name for t in selected if t.is_3d]
    if three_d and not recipe.supports_3d:
        able = [name for name, r in RECIPES.items() if r.supports_3d and name != "none"]
        raise ValueError(
            f"recipe {recipe.name!r} cannot quantize 3D fused expert weights in torchao 0.18 "
            f"({len(three_d)} selected, e.g. {three_d[0]}). Recipes that can: {', '.join(able)}; "
            "or keep the experts in bf16 with --skip='experts'."
        )


def _generalise(name: str) -> str:
    """``model.layers.3.mlp.up_proj`` -> regex ``model\\.layers\\.\\d+\\.mlp\\.up_proj``."""
    return r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in name.split("."))


def build_fqn_regexes(selected: list[QuantTarget], all_names: list[str]) -> list[str]:
    """Regexes (without the ``re:`` prefix) that fully match exactly the selected names among
    ``all_names``: layer indices become ``\\d+`` unless that would also match an unselected name, in
    which case the exact (escaped) names are kept. Sorted for a stable config.json."""
    selected_names = {t.name for t in selected}
    unselected = [n for n in all_names if n not in selected_names]
    groups: dict[str, list[str]] = {}
    for name in sorted(selected_names):
        groups.setdefault(_generalise(name), []).append(name)
    regexes = []
    for pattern, names in sorted(groups.items()):
        compiled = re.compile(pattern)
        if any(compiled.fullmatch(n) for n in unselected):
            regexes.extend(re.escape(n) for n in names)
        else:
            regexes.append(pattern)
    return regexes


def build_fqn_to_config(selected: list[QuantTarget], all_names: list[str], config):
    from torchao.quantization import FqnToConfig

    return FqnToConfig({f"re:{regex}": config for regex in build_fqn_regexes(selected, all_names)})


def describe_weight(tensor: torch.Tensor) -> dict[str, str]:
    """Stored type, element dtype and granularity of a (possibly torchao-quantized) weight."""
    from torchao.utils import TorchAOBaseTensor

    if not isinstance(tensor, TorchAOBaseTensor):
        return {
            "tensor_type": "plain",
            "qdtype": str(tensor.dtype).removeprefix("torch."),
            "granularity": "-",
        }
    qdata = getattr(tensor, "qdata", None)
    qdtype = str(qdata.dtype).removeprefix("torch.") if qdata is not None else "?"
    granularity = "-"
    block_size = getattr(tensor, "block_size", None)
    if block_size is not None:
        granularity = f"block {list(block_size) if not isinstance(block_size, int) else block_size}"
    elif getattr(tensor, "granularity", None) is not None:
        granularity = type(tensor.granularity).__name__
    weight_dtype = getattr(tensor, "elem_dtype", None) or getattr(tensor, "target_dtype", None)
    if weight_dtype is not None:
        qdtype = f"{qdtype} ({str(weight_dtype).removeprefix('torch.')})"
    return {"tensor_type": type(tensor).__name__, "qdtype": qdtype, "granularity": granularity}
