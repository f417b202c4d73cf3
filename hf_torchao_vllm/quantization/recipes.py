"""The recipe registry (name -> torchao config) and generic weight selection for HF causal LMs.

One table serves ``quantize_hf_model_with_torchao.py``, the pipeline, the conformance matrix, the
converter's tests and the repository's ``test_ao.py``. A ``Recipe`` keeps together what torchao
keeps together for a config: how to build it (the torchao layouts to try, in order), which weight
shapes it can take, the SQNR floors it must reach, and a one-line description. ``ALIASES`` maps the
other spellings (``test_ao.py``'s short names, the converter's scheme names) to a recipe and the
options they imply.

A *selection* decides, from module and parameter names and types only (never a model name), which
weights get the recipe:

- quantizable weights: ``nn.Linear.weight`` and fused 3D expert parameters
  (``[num_experts, out, in]``, e.g. Qwen3-MoE ``mlp.experts.gate_up_proj`` / ``down_proj``);
  biases never (they are not matmul weights);
- never quantized unless asked: routers / gates / shared-expert gates (they pick experts; their
  outputs go through a softmax / top-k that small errors flip) and the output embedding.

The selection becomes a ``FqnToConfig`` whose keys are ``re:`` regexes over *parameter* names
(``...q_proj\\.weight``), so that transformers' loader never applies a module key to the module's
bias; layer indices are generalised to ``\\d+`` when that matches exactly the selected set.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

# Modules that route tokens to experts: "mlp.gate" (Qwen / Mixtral / DeepSeek routers),
# "mlp.shared_expert_gate" (Qwen2-MoE), "feed_forward.router" (Llama-4), "mlp.router" (gpt-oss,
# PhiMoE), and a Linear inside such a module ("ffn.router.layer", Dbrx). Not "mlp.gate_proj".
ROUTER_NAME_REGEX = re.compile(r"(^|\.)(\w+_)?(gate|router)$")
ATTENTION_COMPONENT_REGEX = re.compile(r"attn|attention")
MLP_COMPONENT_REGEX = re.compile(r"mlp|ffn|feed_forward|experts?|moe")
EXPERTS_COMPONENT_REGEX = re.compile(r"^experts$")

MODULE_SELECTORS = ("all", "experts_only", "mlp_only", "skip_attention")
FP8_GRANULARITIES = ("per_row", "per_tensor", "a1x128_w128x128")


@dataclasses.dataclass(frozen=True)
class RecipeOptions:
    granularity: str = "per_row"  # fp8 only
    group_size: int = 128  # int4 / intx only
    fp8_emulation_on_cpu: bool = False  # fp8 only: bypass torchao's hardware check on CPU


ShapeRule = Callable[[tuple[int, ...], RecipeOptions], "str | None"]
VariantBuilder = Callable[[RecipeOptions, torch.device], "list[tuple[str, Any]]"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One quantization recipe: config builder, shape rule, SQNR floors, description."""

    name: str
    description: str
    # (label, AOBaseConfig) in order of preference; the first that quantizes and runs a probe
    # Linear on the device is used. Several only where torchao has several layouts for one recipe.
    build_variants: VariantBuilder
    # Why a weight of this shape ([out, in] or [experts, out, in]) cannot take the recipe, or None.
    shape_rule: ShapeRule
    # Lowest SQNR (dB) of any quantized layer's output vs the bf16 layer on the same input, measured
    # with test_ao.py on CPU (seed 0) as the worst layer of its toys and a 2-layer random Llama,
    # set 3-5 dB under the lowest so seeds do not flip it while a broken kernel (~0 dB) is caught.
    min_layer_sqnr_db: float
    # Lowest SQNR (dB) of the embedded dense model's logits vs bf16 on 1,023 held-out tokens, every
    # Linear but lm_head quantized (quantize_hf_model_with_torchao), 5 dB under the measured value;
    # None where the recipe does not run on CPU.
    min_logits_sqnr_db: float | None
    supports_3d: bool  # torchao 0.18 quantizes and runs fused [E, out, in] expert weights
    cuda_only_reason: str | None = None  # None: runs on CPU too
    needs_bf16_weight: bool = False  # torchao refuses other weight dtypes
    options: tuple[str, ...] = ()  # the RecipeOptions fields the recipe reads


def _no_rule(shape: tuple[int, ...], options: RecipeOptions) -> str | None:
    return None


def _in_features_rule(what: str, divisor: Callable[[RecipeOptions], int]) -> ShapeRule:
    def rule(shape: tuple[int, ...], options: RecipeOptions) -> str | None:
        d = divisor(options)
        if shape[-1] % d:
            return f"in_features {shape[-1]} % {what} {d} != 0"
        return None

    return rule


def _both_dims_rule(multiple: int, why: str) -> ShapeRule:
    def rule(shape: tuple[int, ...], options: RecipeOptions) -> str | None:
        out_features, in_features = shape[-2:]
        if out_features % multiple or in_features % multiple:
            dims = f"(out_features, in_features) ({out_features}, {in_features})"
            return f"{dims} not both multiples of {multiple} ({why})"
        return None

    return rule


def _fp8_rule(shape: tuple[int, ...], options: RecipeOptions) -> str | None:
    if options.granularity == "a1x128_w128x128":
        return _both_dims_rule(128, "128x128 weight blocks")(shape, options)
    return _both_dims_rule(16, "torch._scaled_mm needs multiples of 16")(shape, options)


# ---- config builders (torchao imports stay inside: nothing heavy at import time)


def _int8_weight_only(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Int8WeightOnlyConfig, PerRow

    return [("per-row", Int8WeightOnlyConfig(granularity=PerRow()))]


def _int8_dynamic(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow

    return [("per-row", Int8DynamicActivationInt8WeightConfig(granularity=PerRow()))]


def _intx4(options: RecipeOptions) -> Any:
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(options.group_size))


def _int4_weight_only(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Int4WeightOnlyConfig

    # torchao 0.18's Int4WeightOnlyConfig has no CPU layout (plain needs the mslk CUDA kernels,
    # tile_packed_to_4d is tinygemm, plain_int32 is XPU/NPU); the intx int4 tensor is the one that
    # runs and saves on CPU, and the one the compressed-tensors converter maps.
    return [
        (fmt, Int4WeightOnlyConfig(group_size=options.group_size, int4_packing_format=fmt))
        for fmt in ("plain", "tile_packed_to_4d", "plain_int32")
    ] + [("intx", _intx4(options))]


def _intx4_weight_only(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    return [(f"group {options.group_size}", _intx4(options))]


def _int8_dynamic_intx4(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerGroup

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(options.group_size)
    )
    return [(f"group {options.group_size}", config)]


def _fp8_dynamic(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerBlock, PerRow, PerTensor

    granularity = {
        "per_row": PerRow(),
        "per_tensor": PerTensor(),
        "a1x128_w128x128": [PerBlock([1, 128]), PerBlock([128, 128])],
    }[options.granularity]
    # CPU emulation: an all-zero activation row (e.g. the embedding of a padding_idx token such as
    # the embedded models' EOS) gives a zero per-row scale and 0/0 = NaN in torchao's torch
    # quantize path; a tiny lower bound on amax keeps the scale finite and changes no other row.
    # On CUDA it stays None, which keeps torchao's MSLK quantize kernel eligible.
    lower_bound = None if device.type == "cuda" else 1e-12
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=granularity, activation_value_lb=lower_bound
    )
    return [(options.granularity, config)]


def _fp8_weight_only(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.quantization import Float8WeightOnlyConfig, PerRow

    return [("per-row", Float8WeightOnlyConfig(granularity=PerRow()))]


def _mx(elem_dtype_name: str) -> VariantBuilder:
    def build(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
        from torchao.prototype.mx_formats import MXDynamicActivationMXWeightConfig
        from torchao.quantization.quantize_.common import KernelPreference

        elem_dtype = getattr(torch, elem_dtype_name)
        # AUTO is the real MX gemm (CUDA sm100+); EMULATED dequantizes and runs a bf16 matmul.
        return [
            (
                preference.value,
                MXDynamicActivationMXWeightConfig(
                    activation_dtype=elem_dtype, weight_dtype=elem_dtype, kernel_preference=preference
                ),
            )
            for preference in (KernelPreference.AUTO, KernelPreference.EMULATED)
        ]

    return build


def _nvfp4_weight_only(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig

    return [("dynamic per-tensor scale", NVFP4WeightOnlyConfig())]


def _nvfp4_dynamic(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    from torchao.prototype.mx_formats import NVFP4DynamicActivationNVFP4WeightConfig

    # The triton activation kernel needs CUDA and the mslk package; the plain path is the fallback.
    return [
        ("triton", NVFP4DynamicActivationNVFP4WeightConfig()),
        ("no triton", NVFP4DynamicActivationNVFP4WeightConfig(use_triton_kernel=False)),
    ]


def _no_config(options: RecipeOptions, device: torch.device) -> list[tuple[str, Any]]:
    return []


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("none", "no quantization (bf16 through the same save / reload path)", _no_config, _no_rule,
               min_layer_sqnr_db=float("inf"), min_logits_sqnr_db=None, supports_3d=True),
        Recipe("int8_weight_only", "Int8WeightOnlyConfig: int8 weights, per-row scales; bf16 activations",
               _int8_weight_only, _no_rule,
               min_layer_sqnr_db=38.0,  # measured worst layer: small 45.6, large 45.6, llama 42.4
               min_logits_sqnr_db=42.0,  # measured 47.3
               supports_3d=True),
        Recipe("int8_dynamic_act_int8_weight",
               "Int8DynamicActivationInt8WeightConfig: int8 per-row weights, int8 per-token activations",
               _int8_dynamic, _no_rule,
               min_layer_sqnr_db=32.0,  # measured: small 41.1, large 40.1, llama 36.4
               min_logits_sqnr_db=36.0,  # measured 41.6
               supports_3d=True),
        Recipe("int4_weight_only",
               "int4 weights, per-group scales: the first Int4WeightOnlyConfig layout that runs here, "
               "else IntxWeightOnlyConfig(int4) (the CPU path)",
               _int4_weight_only, _in_features_rule("group_size", lambda o: o.group_size),
               min_layer_sqnr_db=15.0,  # measured (intx, group 32): small 22.8, large 17.9, llama 20.4
               min_logits_sqnr_db=28.0,  # measured 33.1 (group 128)
               supports_3d=False, options=("group_size",)),
        Recipe("intx4_weight_only",
               "IntxWeightOnlyConfig(int4, PerGroup): int4 values stored in int8, per-group scales",
               _intx4_weight_only, _in_features_rule("group_size", lambda o: o.group_size),
               min_layer_sqnr_db=15.0,  # measured: small 22.8, large 17.9 (in=4096), llama 20.4
               min_logits_sqnr_db=28.0,  # same tensor as int4_weight_only on CPU (33.1 measured)
               supports_3d=False, options=("group_size",)),
        Recipe("int8_dynamic_act_intx4_weight",
               "Int8DynamicActivationIntxWeightConfig(int4, PerGroup): int4 weights, int8 activations",
               _int8_dynamic_intx4, _in_features_rule("group_size", lambda o: o.group_size),
               min_layer_sqnr_db=15.0,  # measured: small 22.8, large 17.9, llama 20.4
               min_logits_sqnr_db=None, supports_3d=False, options=("group_size",)),
        Recipe("fp8",
               "Float8DynamicActivationFloat8WeightConfig: float8 e4m3 weights and dynamic activations "
               "(--granularity per_row | per_tensor | a1x128_w128x128)",
               _fp8_dynamic, _fp8_rule,
               min_layer_sqnr_db=22.0,  # not measured with test_ao (CUDA sm89+); torchao's fp8 rule of thumb
               min_logits_sqnr_db=30.0,  # measured 36.0 (per_row), 35.9 (per_tensor), CPU emulation
               supports_3d=True, needs_bf16_weight=True,
               options=("granularity", "fp8_emulation_on_cpu")),
        Recipe("fp8_weight_only", "Float8WeightOnlyConfig: float8 e4m3 per-row weights; bf16 activations",
               _fp8_weight_only, _no_rule,
               min_layer_sqnr_db=27.0,  # measured: small 31.7, large 31.5, llama 31.6
               min_logits_sqnr_db=37.0,  # measured 42.8
               supports_3d=True),
        Recipe("mxfp8", "MXDynamicActivationMXWeightConfig(e4m3): 32-element blocks, e8m0 scales",
               _mx("float8_e4m3fn"), _in_features_rule("MX block", lambda o: 32),
               min_layer_sqnr_db=24.0,  # measured (emulated gemm): small 28.3, large 28.6, llama 28.4
               min_logits_sqnr_db=30.0,  # measured 35.4
               supports_3d=False, needs_bf16_weight=True),
        Recipe("mxfp4", "MXDynamicActivationMXWeightConfig(e2m1): 32-element blocks, e8m0 scales",
               _mx("float4_e2m1fn_x2"), _in_features_rule("MX block", lambda o: 32),
               min_layer_sqnr_db=11.0,  # measured (emulated gemm): small 15.6, large 16.1, llama 14.7
               min_logits_sqnr_db=18.0,  # measured 23.2
               supports_3d=False, needs_bf16_weight=True),
        Recipe("nvfp4",
               "NVFP4DynamicActivationNVFP4WeightConfig: fp4 weights and dynamic activations, 16-element "
               "blocks, fp8 block scales + fp32 tensor scale",
               _nvfp4_dynamic, _both_dims_rule(16, "NVFP4 block size"),
               min_layer_sqnr_db=12.0,  # not measured (CUDA sm100+); below the weight-only value
               min_logits_sqnr_db=None, supports_3d=False,
               cuda_only_reason="torchao's NVFP4 dynamic-activation mode asserts an sm100+ GPU"),
        Recipe("nvfp4_weight_only",
               "NVFP4WeightOnlyConfig: fp4 weights (16-element blocks, fp8 block scales + fp32 tensor scale)",
               _nvfp4_weight_only, _both_dims_rule(16, "NVFP4 block size"),
               min_layer_sqnr_db=16.0,  # measured (emulated): small 19.7, large 19.7, llama 20.3
               min_logits_sqnr_db=29.0,  # measured 34.2
               supports_3d=False),
    ]
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ConversionTolerance:
    """How far compressed-tensors' decompression of a converted weight may be from torchao's."""

    max_relative_diff: float
    min_sqnr_db: float


# torchao tensor type -> the converter validator's tolerance, where the mapping is not bit-exact
# (every other type must decompress to torchao's dequantization exactly). NVFP4: compressed-tensors
# divides by weight_global_scale = 1 / per_tensor_scale (float32) while torchao multiplies by
# per_tensor_scale, so the float32 scales can differ by an ulp and a bf16 result by one rounding
# step. Measured on random and trained weights: max relative difference 0.0078 (one bf16 ulp, 2**-7)
# on a handful of elements, SQNR > 60 dB.
CONVERSION_TOLERANCES: dict[str, ConversionTolerance] = {
    "NVFP4Tensor": ConversionTolerance(max_relative_diff=2**-7, min_sqnr_db=50.0),
}

# Other spellings -> (recipe, options they imply). test_ao.py's short names and the converter
# tests' scheme names live here, so every tool resolves a name the same way.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "int8wo": ("int8_weight_only", {}),
    "int8dq": ("int8_dynamic_act_int8_weight", {}),
    "w8a8": ("int8_dynamic_act_int8_weight", {}),
    "int4wo": ("int4_weight_only", {}),
    "intx4wo": ("intx4_weight_only", {}),
    "int8dq_intx4w": ("int8_dynamic_act_intx4_weight", {}),
    "float8wo": ("fp8_weight_only", {}),
    "float8dq_row": ("fp8", {"granularity": "per_row"}),
    "float8dq_tensor": ("fp8", {"granularity": "per_tensor"}),
    "fp8_per_row": ("fp8", {"granularity": "per_row"}),
    "fp8_per_tensor": ("fp8", {"granularity": "per_tensor"}),
    "fp8_a1x128_w128x128": ("fp8", {"granularity": "a1x128_w128x128"}),
    "nvfp4wo": ("nvfp4_weight_only", {}),
    "nvfp4dq": ("nvfp4", {}),
}


def resolve(name: str, options: RecipeOptions | None = None) -> tuple[Recipe, RecipeOptions]:
    """The recipe called ``name`` (a recipe or an alias) and ``options`` with the alias's settings."""
    options = options or RecipeOptions()
    if name in RECIPES:
        return RECIPES[name], options
    if name in ALIASES:
        recipe, implied = ALIASES[name]
        return RECIPES[recipe], dataclasses.replace(options, **implied)
    raise ValueError(
        f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (aliases: {', '.join(ALIASES)})"
    )


def check_options_apply(recipe: str, given: dict[str, Any]) -> None:
    """``ValueError`` when a flag in ``given`` (name -> value, None: not given) does not apply to
    ``recipe``, or contradicts what its alias sets (``fp8_per_tensor --granularity=per_row``)."""
    entry, _ = resolve(recipe)
    implied = ALIASES[recipe][1] if recipe in ALIASES else {}
    for name, value in given.items():
        if value is None or value is False:
            continue
        if name not in entry.options:
            users = [r.name for r in RECIPES.values() if name in r.options]
            raise ValueError(
                f"--{name} applies to recipe {' / '.join(users)} only, not {recipe}: drop --{name}"
            )
        if name in implied and implied[name] != value:
            raise ValueError(
                f"--{name}={value} contradicts recipe {recipe} ({name} {implied[name]}): "
                f"drop --{name} or pass --recipe={entry.name}"
            )


def validate_recipe_options(recipe: str, options: RecipeOptions, device: torch.device) -> Recipe:
    """The ``Recipe`` for ``recipe``, or a ``ValueError`` naming valid choices / what runs here."""
    entry, options = resolve(recipe, options)
    if options.granularity not in FP8_GRANULARITIES:
        raise ValueError(
            f"unknown granularity {options.granularity!r}; valid: {', '.join(FP8_GRANULARITIES)} (for fp8)"
        )
    if (
        isinstance(options.group_size, bool)
        or not isinstance(options.group_size, int)
        or options.group_size <= 0
    ):
        raise ValueError(
            f"--group_size must be a positive int, got {options.group_size!r}: pass e.g. --group_size=128"
        )
    if device.type != "cuda" and entry.cuda_only_reason is not None:
        raise ValueError(
            f"recipe {entry.name!r} is not supported on {device.type}: {entry.cuda_only_reason}. "
            f"Recipes that run on {device.type}: {', '.join(cpu_capable_recipes(options))}"
        )
    if entry.name == "fp8" and device.type != "cuda" and not options.fp8_emulation_on_cpu:
        raise ValueError(
            "recipe 'fp8' (dynamic float8 activations) is refused by torchao on CPU by a hardware "
            "check: pass --fp8_emulation_on_cpu=True to bypass the check and emulate with CPU "
            "torch._scaled_mm (numerically correct, slow), or use one of: "
            f"{', '.join(cpu_capable_recipes(options))}"
        )
    return entry


def cpu_capable_recipes(options: RecipeOptions | None = None) -> list[str]:
    names = [n for n, r in RECIPES.items() if r.cuda_only_reason is None]
    if options is None or not options.fp8_emulation_on_cpu:
        names.remove("fp8")
        names.append("fp8 (with --fp8_emulation_on_cpu=True)")
    return names


@contextmanager
def maybe_bypass_fp8_hardware_check(enabled: bool):
    """Skip torchao's float8 dynamic-activation hardware check (CPU emulation, explicit opt-in only)."""
    if not enabled:
        yield
        return
    from unittest import mock

    with mock.patch("torchao.quantization.quant_api._check_hardware_support", lambda granularities: None):
        yield


def probe_config(config: Any, device: torch.device, run: bool = True) -> None:
    """Quantize one bf16 Linear(256 -> 128) with ``config`` (and run it); raises what torchao raised."""
    from torchao.quantization import quantize_

    probe = torch.nn.Linear(256, 128, device=device, dtype=torch.bfloat16)
    quantize_(probe, config)
    if run:
        with torch.no_grad():
            probe(torch.randn(16, 256, device=device, dtype=torch.bfloat16))


@dataclasses.dataclass
class Variant:
    label: str
    config: Any  # None: no variant works here (``probe_errors`` says why)
    probe_errors: list[str]


def format_error(error: BaseException) -> str:
    """``Type: first line of the message`` (torchao's messages can be long)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def choose_variant(
    recipe: Recipe, options: RecipeOptions, device: torch.device, run_probe: bool = True
) -> Variant:
    """The first of the recipe's torchao configs that quantizes (and, with ``run_probe``, runs) a probe
    Linear on ``device``; the errors of the ones before it."""
    variants = recipe.build_variants(options, device)
    errors = []
    bypass = recipe.name == "fp8" and device.type != "cuda" and options.fp8_emulation_on_cpu
    for label, config in variants:
        try:
            with maybe_bypass_fp8_hardware_check(bypass):
                probe_config(config, device, run=run_probe)
        except Exception as error:  # noqa: BLE001 - device support is what the probe asks about
            errors.append(f"[{label}] {format_error(error)}")
            continue
        return Variant(label, config, errors)
    return Variant(variants[0][0] if variants else "-", None, errors)


# ---- weight selection


@dataclasses.dataclass(frozen=True)
class QuantTarget:
    """One weight that a recipe may quantize.

    ``name`` is the module name for ``nn.Linear`` weights and the parameter name for 3D expert
    weights (the names a user's ``--skip`` regexes see); ``param_name`` is always the parameter.
    """

    name: str
    param_name: str  # e.g. "model.layers.0.mlp.up_proj.weight"
    shape: tuple[int, ...]
    is_expert: bool
    is_3d: bool
    is_transposed: bool = False  # 3D experts stored [E, in, out] (transformers' is_transposed)
    is_interleaved: bool = False  # gate / up rows interleaved, not [gate; up] (transformers' is_concatenated)

    @property
    def module_name(self) -> str:
        return self.param_name.rpartition(".")[0]


@dataclasses.dataclass(frozen=True)
class Selection:
    selected: list[QuantTarget]
    skipped: dict[str, str]  # target name -> reason
    targets: dict[str, QuantTarget]  # every candidate by name


PROTECTED_ROUTER = "router / gate; pass --quantize_routers=True to include"
PROTECTED_LM_HEAD = "output embedding (lm_head); pass --quantize_lm_head=True to include"


def _is_router(module_name: str, module: torch.nn.Module) -> bool:
    type_name = type(module).__name__.lower()
    return bool(ROUTER_NAME_REGEX.search(module_name)) or "router" in type_name


def find_quant_targets(model: torch.nn.Module) -> tuple[list[QuantTarget], dict[str, str]]:
    """All weights a recipe could quantize, and the never-by-default ones (routers, lm_head) with reasons."""
    output_embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    candidates: list[QuantTarget] = []
    protected: dict[str, str] = {}
    modules = dict(model.named_modules())
    for module_name, module in modules.items():
        components = module_name.split(".")
        in_experts = any(EXPERTS_COMPONENT_REGEX.match(c) for c in components)
        if isinstance(module, torch.nn.Linear):
            parent_name = module_name.rpartition(".")[0]
            if module is output_embeddings:
                protected[module_name] = PROTECTED_LM_HEAD
            elif _is_router(module_name, module) or (
                parent_name and _is_router(parent_name, modules[parent_name])
            ):
                protected[module_name] = PROTECTED_ROUTER
            param_name = f"{module_name}.weight"
            candidates.append(
                QuantTarget(module_name, param_name, tuple(module.weight.shape), in_experts, False)
            )
            continue
        is_router = _is_router(module_name, module)
        for param_name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if is_router and param.dim() == 2 and param_name == "weight":
                protected[full_name] = PROTECTED_ROUTER
                candidates.append(QuantTarget(full_name, full_name, tuple(param.shape), False, False))
            elif param.dim() == 3 and in_experts and not param_name.endswith("bias"):
                transposed = bool(getattr(module, "is_transposed", False))
                interleaved = not getattr(module, "is_concatenated", True)
                target = QuantTarget(
                    full_name, full_name, tuple(param.shape), True, True, transposed, interleaved
                )
                candidates.append(target)
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
            raise ValueError(
                f"--skip pattern {pattern!r} is not a valid regex ({error}): fix the regex"
            ) from error
    candidates, protected = find_quant_targets(model)
    selected, skipped = [], {}
    for target in candidates:
        reason = _skip_reason(target, protected, modules, skip_regexes, quantize_lm_head, quantize_routers)
        if reason is None:
            selected.append(target)
        else:
            skipped[target.name] = reason
    return Selection(selected=selected, skipped=skipped, targets={t.name: t for t in candidates})


def _skip_reason(target, protected, modules, skip_regexes, quantize_lm_head, quantize_routers) -> str | None:
    components = target.name.split(".")
    if target.name in protected:
        is_lm_head = protected[target.name] == PROTECTED_LM_HEAD
        if (is_lm_head and not quantize_lm_head) or (not is_lm_head and not quantize_routers):
            return protected[target.name]
    if modules == "experts_only" and not target.is_expert:
        return "not an expert weight (--modules=experts_only)"
    if modules == "mlp_only" and not any(MLP_COMPONENT_REGEX.search(c) for c in components):
        return "not in an MLP / MoE block (--modules=mlp_only)"
    if modules == "skip_attention" and any(ATTENTION_COMPONENT_REGEX.search(c) for c in components):
        return "attention (--modules=skip_attention)"
    for pattern in skip_regexes:
        if pattern.search(target.name):
            return f"matches --skip {pattern.pattern!r}"
    return None


def shape_problems(recipe: Recipe, options: RecipeOptions, selected: list[QuantTarget]) -> list[str]:
    """``name [shape] (why)`` for every selected weight the recipe cannot take."""
    bad = []
    for target in selected:
        problem = recipe.shape_rule(target.shape, options)
        if problem is None and target.is_3d and not recipe.supports_3d:
            problem = "a fused 3D expert weight, which this recipe cannot quantize in torchao 0.18"
        if problem is None and target.is_transposed:
            problem = (
                "a fused expert weight stored [experts, in, out]: torchao's per-row scales would run "
                "along the input dimension"
            )
        if problem is None and target.is_interleaved:
            problem = (
                "a fused expert weight with interleaved gate / up rows, which no converter target unfuses"
            )
        if problem is not None:
            bad.append(f"{target.name} {list(target.shape)} ({problem})")
    return bad


def check_shapes(recipe: Recipe, options: RecipeOptions, selected: list[QuantTarget]) -> None:
    """A ``ValueError`` listing every selected weight the recipe cannot take, with the fix."""
    bad = shape_problems(recipe, options, selected)
    if not bad:
        return
    fixes = ["exclude them with --skip=<regex>"]
    if any("group_size" in b for b in bad):
        fixes.insert(0, "use a smaller --group_size that divides them")
    if any("3D expert" in b for b in bad):
        able = [name for name, r in RECIPES.items() if r.supports_3d and name != "none"]
        fixes.append(
            f"recipes that quantize 3D experts: {', '.join(able)}; or keep them bf16 with --skip=experts"
        )
    raise ValueError(
        f"recipe {recipe.name!r} cannot quantize {len(bad)} selected weight(s): {'; '.join(bad[:8])}"
        f"{' ...' if len(bad) > 8 else ''}: {'; '.join(fixes)}"
    )


def _generalise(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> regex ``model\\.layers\\.\\d+\\.mlp\\.up_proj\\.weight``."""
    return r"\.".join(r"\d+" if part.isdigit() else re.escape(part) for part in name.split("."))


def build_fqn_regexes(selected_names: list[str], all_names: list[str]) -> list[str]:
    """Regexes (without the ``re:`` prefix) that fully match exactly ``selected_names`` among
    ``all_names``: numeric parts become ``\\d+`` unless that would also match an unselected name, in
    which case the exact (escaped) names are kept. Sorted for a stable config.json."""
    chosen = set(selected_names)
    unselected = [n for n in all_names if n not in chosen]
    groups: dict[str, list[str]] = {}
    for name in sorted(chosen):
        groups.setdefault(_generalise(name), []).append(name)
    regexes = []
    for pattern, names in sorted(groups.items()):
        compiled = re.compile(pattern)
        if any(compiled.fullmatch(n) for n in unselected):
            regexes.extend(re.escape(n) for n in names)
        else:
            regexes.append(pattern)
    return regexes


def build_fqn_to_config(configs_by_param: dict[str, Any], all_param_names: list[str]):
    """``FqnToConfig`` over parameter names: ``{param name: torchao config}`` -> ``re:`` keys."""
    from torchao.quantization import FqnToConfig

    by_config: dict[int, list[str]] = {}
    config_of: dict[int, Any] = {}
    for name, config in configs_by_param.items():
        by_config.setdefault(id(config), []).append(name)
        config_of[id(config)] = config
    mapping = {}
    for key, names in by_config.items():
        for regex in build_fqn_regexes(names, all_param_names):
            mapping[f"re:{regex}"] = config_of[key]
    return FqnToConfig(dict(sorted(mapping.items())))


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
