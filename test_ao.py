"""What did ``torchao.quantize_`` actually do to my model? An empathy check across torchao configs.

Printing a quantized model tells you little, and some configs silently leave layers alone (int4
weight-only on a layer whose in_features does not divide by the group size, float8 on shapes that
are not multiples of 16). For every config this script runs ``quantize_`` on a fresh copy of the
model and reports the truth, found by comparing each weight's type and dtype before and after, never
by trusting that ``quantize_`` did something:

- per module: original weight dtype/shape, resulting weight class, stored inner tensors and their
  dtypes, element dtype, granularity / group size, activation quantization, bytes before/after, the
  SQNR of the layer's output, and for modules left alone the reason when it can be inferred;
- per config: SQNR of the model output against the bf16 model on the same random inputs, eager (and
  with ``--compile`` compiled) forward time against bf16, and a status (ok / partial / no-op /
  unsupported on the device / low SQNR).

A config that the device cannot run is reported with the error torchao gave and the run continues.
The exit code is non-zero only for real errors: a bad argument, a crash of this script, or a
quantized layer whose output SQNR is below the config's measured threshold (``--check_sqnr=False``
turns that check off). Configs the device cannot run, or that quantize nothing, exit 0: they are
findings, reported in the table.

    .venv/bin/python -m test_ao                                   # small toy model, every config
    .venv/bin/python -m test_ao --model=odd_shapes --configs=int4wo,intx4wo   # see silent skips
    .venv/bin/python -m test_ao --model=embedded --output_dir=/tmp/ao_report  # the repo's tiny HF model
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent
EMBEDDED_MODEL_DIR = REPO_ROOT / "hf_torchao_vllm" / "embedded_models" / "dense"
TOY_MODELS = ("small", "large", "odd_shapes")
SUPPORTED_GROUP_SIZES = (32, 64, 128, 256)  # Int4WeightOnlyConfig's documented choices

TEST_AO_CONFIGS = (
    "int8wo",
    "int8dq",
    "int4wo",
    "float8wo",
    "float8dq_row",
    "float8dq_tensor",
    "intx4wo",
    "int8dq_intx4w",
    "mxfp8",
    "mxfp4",
    "nvfp4wo",
    "nvfp4dq",
)


@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    """One torchao recipe as this script runs it: variants tried in order, threshold, shape rule.

    Built from ``hf_torchao_vllm.quantization.recipes`` (the registry the quantizer and the converter
    use), so a recipe's configs, shape rules and SQNR floor live in one place."""

    name: str
    description: str
    # Minimum SQNR (dB) of every quantized layer's output against the bf16 layer on the same input
    # (per layer, not per model: the model-output SQNR falls with depth, a layer's does not).
    min_layer_sqnr_db: float
    # (variant label, AOBaseConfig) candidates; the first that quantizes and runs a probe Linear on
    # the device is used. Several only where torchao offers several kernels / layouts for one recipe.
    build_variants: Callable[[int, torch.device], list[tuple[str, Any]]]
    # Why a Linear with this weight would be left alone or rejected (None when the shape is fine).
    shape_rule: Callable[[torch.Tensor, int], str | None]
    needs_bf16_weight: bool = False


def _no_rule(weight: torch.Tensor, group_size: int) -> str | None:
    return None


def spec_from_registry(name: str) -> ConfigSpec:
    """The ``ConfigSpec`` of recipe or alias ``name`` of ``hf_torchao_vllm.quantization.recipes``."""
    from hf_torchao_vllm.quantization import recipes

    recipe, options = recipes.resolve(name)

    def with_group(group_size: int) -> Any:
        return dataclasses.replace(options, group_size=group_size)

    def shape_rule(weight: torch.Tensor, group_size: int) -> str | None:
        problem = recipe.shape_rule(tuple(weight.shape), with_group(group_size))
        return None if problem is None else f"shape: {problem}"

    return ConfigSpec(
        name=name,
        description=recipe.description + (f" ({options.granularity})" if recipe.name == "fp8" else ""),
        min_layer_sqnr_db=recipe.min_layer_sqnr_db,
        build_variants=lambda group_size, device: recipe.build_variants(with_group(group_size), device),
        shape_rule=shape_rule,
        needs_bf16_weight=recipe.needs_bf16_weight,
    )


CONFIG_REGISTRY: dict[str, ConfigSpec] = {name: spec_from_registry(name) for name in TEST_AO_CONFIGS}


# ----------------------------------------------------------------------------------------------
# Models and inputs


class OddShapes(nn.Module):
    """A toy whose middle layer has in_features=40 (not divisible by 32) and out_features=24."""

    def __init__(self) -> None:
        super().__init__()
        self.proj_in = nn.Linear(256, 40)
        self.odd = nn.Linear(40, 24)
        self.norm = nn.LayerNorm(24)
        self.proj_out = nn.Linear(24, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, 256) -> (batch, 256)
        return self.proj_out(self.norm(torch.relu(self.odd(torch.relu(self.proj_in(x))))))


def build_toy_model(name: str) -> nn.Module:
    """The named toy model in float32 (callers cast); Linear/ReLU/LayerNorm only."""
    if name == "small":
        # (batch, 256) -> (batch, 256)
        return nn.Sequential(
            nn.Linear(256, 512),
            nn.ReLU(),
            nn.Linear(512, 512),
            nn.LayerNorm(512),
            nn.ReLU(),
            nn.Linear(512, 256),
        )
    if name == "large":
        # four transformer-MLP-like blocks: (batch, 1024) -> (batch, 4096) -> (batch, 1024)
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024), nn.LayerNorm(1024)]
        return nn.Sequential(*layers)
    if name == "odd_shapes":
        return OddShapes()
    raise ValueError(f"unknown toy model {name!r}; choose one of {TOY_MODELS}")


@dataclasses.dataclass
class ModelUnderTest:
    """A model plus the random inputs every config is compared on."""

    name: str
    model: nn.Module
    inputs: dict[str, Any]  # keyword arguments of model.forward
    is_hf: bool


def _first_linear_in_features(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return module.in_features
    raise ValueError("the toy model has no nn.Linear; nothing for torchao to quantize")


def load_model(
    model: str, device: torch.device, batch_size: int, seq_len: int, dtype: torch.dtype
) -> ModelUnderTest:
    """``small``/``large``/``odd_shapes`` toys, ``embedded`` (the repo's tiny HF model) or an HF folder."""
    if model in TOY_MODELS:
        net = build_toy_model(model).to(device=device, dtype=dtype).eval()
        x = torch.randn(batch_size, _first_linear_in_features(net), device=device, dtype=dtype)
        return ModelUnderTest(model, net, {"x": x}, is_hf=False)
    path = EMBEDDED_MODEL_DIR if model == "embedded" else Path(model)
    if not (path / "config.json").is_file():
        hint = (
            "the embedded model is built by hf_torchao_vllm/train_tiny_models.py"
            if model == "embedded"
            else f"pass one of {TOY_MODELS}, 'embedded', or a local Hugging Face model folder"
        )
        raise ValueError(f"--model {model!r}: {path} has no config.json; {hint}")
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    net = net.to(device).eval()
    vocab_size = net.config.vocab_size
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), device=device)
    return ModelUnderTest(str(path), net, {"input_ids": input_ids, "use_cache": False}, is_hf=True)


def model_output(model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The tensor the SQNR is taken on: the output of a toy, the logits of an HF model."""
    # toys take one positional tensor ("x"); HF models take keyword arguments (input_ids, ...)
    out = model(inputs["x"]) if set(inputs) == {"x"} else model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    assert isinstance(logits, torch.Tensor), f"model returned {type(out).__name__} without logits"
    return logits


# ----------------------------------------------------------------------------------------------
# Inspecting weights


def _weighted_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every module that directly owns a ``weight`` parameter (Linear, LayerNorm, Embedding, ...)."""
    for fqn, module in model.named_modules():
        if isinstance(module._parameters.get("weight"), torch.Tensor):
            yield fqn, module


def _inner_tensors(weight: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, plain tensor) for each tensor a subclass stores, recursively; [("data", w)] when plain."""
    if not hasattr(type(weight), "__tensor_flatten__") or type(weight) in (torch.Tensor, nn.Parameter):
        return [("data", weight)]
    names, _ = weight.__tensor_flatten__()
    inner: list[tuple[str, torch.Tensor]] = []
    for name in names:
        value = getattr(weight, name)
        if value is None:
            continue
        inner += [(name if sub == "data" else f"{name}.{sub}", t) for sub, t in _inner_tensors(value)]
    return inner


def weight_bytes(weight: torch.Tensor) -> int:
    """Bytes of the tensors that hold the weight (sum over a subclass's inner tensors)."""
    return sum(t.numel() * t.element_size() for _, t in _inner_tensors(weight))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape_str(shape: torch.Size | tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if len(shape) else "scalar"


def describe_stored(weight: torch.Tensor) -> str:
    """``qdata int8 128x64, scale float32 128x1`` from the weight's inner tensors."""
    return ", ".join(
        f"{name} {_dtype_name(t.dtype)} {_shape_str(t.shape)}" for name, t in _inner_tensors(weight)
    )


def element_dtype(weight: torch.Tensor) -> str:
    """The logical element type (int4 stored unpacked in int8, fp4 packed two per uint8, ...)."""
    for attr in ("target_dtype", "elem_dtype"):
        value = getattr(weight, attr, None)
        if isinstance(value, torch.dtype):
            return _dtype_name(value)
    class_name = type(weight).__name__
    if class_name.startswith("NVFP4"):
        return "float4_e2m1fn_x2"
    if class_name.startswith("Int4"):
        return "int4"
    qdata = getattr(weight, "qdata", None)
    return _dtype_name(qdata.dtype if isinstance(qdata, torch.Tensor) else weight.dtype)


def describe_granularity(weight: torch.Tensor) -> str:
    """Per-tensor / per-row / per-group (size) / blocks, read from the tensor's ``block_size``."""
    block_size = getattr(weight, "block_size", None)
    if isinstance(block_size, int):
        # MX and NVFP4: 1 x block_size blocks along the reduction dimension
        extra = " + per-tensor scale" if getattr(weight, "per_tensor_scale", None) is not None else ""
        return f"blocks 1x{block_size}{extra}"
    if block_size is None:
        return "unknown (no block_size)"
    block = list(block_size)
    shape = list(weight.shape)
    if block == shape:
        return "per-tensor"
    if all(b == 1 for b in block[:-1]) and block[-1] == shape[-1]:
        return "per-row"
    if all(b == 1 for b in block[:-1]):
        return f"per-group {block[-1]}"
    return f"blocks {_shape_str(tuple(block))}"


def describe_activation(weight: torch.Tensor) -> str:
    """``weight-only`` or the dynamic activation quantization the weight carries with it."""
    kwargs = getattr(weight, "act_quant_kwargs", None)
    if kwargs is None:
        kwargs = getattr(weight, "activation_quantization", None)
    if kwargs is None:
        return "weight-only"
    if not dataclasses.is_dataclass(kwargs):
        return f"dynamic {kwargs}"
    # QuantizeTensorToInt8Kwargs -> "int8", QuantizeTensorToMXKwargs -> "mx", ...
    kind = re.fullmatch(r"QuantizeTensorTo(\w+)Kwargs", type(kwargs).__name__)
    parts = [kind.group(1).lower()] if kind else []
    for field in dataclasses.fields(kwargs):
        value = getattr(kwargs, field.name)
        if field.name in ("granularity", "elem_dtype", "float8_dtype", "mapping_type", "block_size"):
            text = _dtype_name(value) if isinstance(value, torch.dtype) else str(value)
            parts.append(text.removeprefix("MappingType."))
    return "dynamic " + " ".join(parts)


def _is_quantized_tensor(weight: torch.Tensor) -> bool:
    return type(weight) not in (torch.Tensor, nn.Parameter)


@dataclasses.dataclass
class WeightSnapshot:
    """What a module's weight looked like before quantize_."""

    module_type: str
    weight_class: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    num_bytes: int
    was_quantized: bool


def snapshot_weights(model: nn.Module) -> dict[str, WeightSnapshot]:
    return {
        fqn: WeightSnapshot(
            module_type=type(module).__name__,
            weight_class=type(module.weight).__name__,
            dtype=module.weight.dtype,
            shape=tuple(module.weight.shape),
            num_bytes=weight_bytes(module.weight),
            was_quantized=_is_quantized_tensor(module.weight),
        )
        for fqn, module in _weighted_modules(model)
    }


# ----------------------------------------------------------------------------------------------
# Running one config


@dataclasses.dataclass
class ModuleRow:
    """One row of the per-module table of one config."""

    fqn: str
    module_type: str
    dtype_before: str
    shape: str
    bytes_before: int
    status: str  # "quantized" | "skipped" | "error" | "replaced"
    weight_class: str
    stored: str
    element_dtype: str
    granularity: str
    activation: str
    bytes_after: int
    reason: str
    layer_sqnr_db: float | None


def _before_columns(fqn: str, snap: WeightSnapshot) -> dict[str, Any]:
    """The columns of a ModuleRow that describe the module before quantize_."""
    return {
        "fqn": fqn,
        "module_type": snap.module_type,
        "dtype_before": _dtype_name(snap.dtype),
        "shape": _shape_str(snap.shape),
        "bytes_before": snap.num_bytes,
    }


@dataclasses.dataclass(frozen=True)
class Timing:
    """Median and range (ms) of repeated timed forwards after warm-up."""

    median_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, result: Any) -> Timing:
        times = [t * 1e3 for t in result.times_s]
        return cls(result.median_s * 1e3, min(times), max(times))

    @property
    def spread_ms(self) -> float:
        return self.max_ms - self.min_ms


def compare_timing(test: Timing | None, baseline: Timing | None) -> str:
    """``median [min-max] (ratio x bf16)``; the ratio is marked unreliable when either run's spread
    (max - min) is larger than the difference of the medians it claims."""
    if test is None:
        return "-"
    cell = f"{test.median_ms:.2f} [{test.min_ms:.2f}-{test.max_ms:.2f}]"
    if baseline is None:
        return cell
    ratio = f"{test.median_ms / baseline.median_ms:.2f}x"
    if max(test.spread_ms, baseline.spread_ms) > abs(test.median_ms - baseline.median_ms):
        return f"{cell} ({ratio}, unreliable: spread > difference)"
    return f"{cell} ({ratio})"


@dataclasses.dataclass
class ConfigResult:
    """Everything found out about one config on one model."""

    name: str
    description: str
    status: str  # ok | partial | no-op | rejected | unsupported | forward-error | low-sqnr
    variant: str
    config_repr: str
    error: str
    probe_errors: list[str]
    torchao_log: list[str]
    modules: list[ModuleRow]
    min_layer_sqnr_db: float
    model_sqnr_db: float | None = None
    eager: Timing | None = None
    compiled: Timing | None = None
    compile_s: float | None = None
    compiled_sqnr_db: float | None = None
    compile_error: str = ""

    @property
    def num_quantized(self) -> int:
        return sum(row.status == "quantized" for row in self.modules)

    @property
    def worst_layer_sqnr_db(self) -> float | None:
        values = [row.layer_sqnr_db for row in self.modules if row.layer_sqnr_db is not None]
        return min(values) if values else None

    @property
    def num_linear(self) -> int:
        return sum(row.module_type.endswith("Linear") for row in self.modules)


def _format_error(error: BaseException) -> str:
    message = " ".join(str(error).split())
    # dynamo appends a generic "Set TORCHDYNAMO_VERBOSE=1 ..." paragraph; the cause comes before it
    message = message.split(" Set TORCHDYNAMO_VERBOSE=1")[0]
    if len(message) > 300:
        message = message[:297] + "..."
    return f"{type(error).__name__}: {message}"


class _LogCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@contextlib.contextmanager
def _collect_torchao_logs() -> Iterator[list[str]]:
    """torchao logs some silent skips at INFO (e.g. int4 group size); keep them as evidence."""
    logger = logging.getLogger("torchao")
    handler = _LogCollector()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _make_filter(exclude_re: re.Pattern[str] | None) -> Callable[[nn.Module, str], bool]:
    from torchao.quantization.quant_api import _is_linear  # quantize_'s default filter_fn

    def filter_fn(module: nn.Module, fqn: str) -> bool:
        if exclude_re is not None and exclude_re.search(fqn):
            return False
        return _is_linear(module, fqn)

    return filter_fn


def quantize_with_attribution(
    original: nn.Module, config: Any, filter_fn: Callable[[nn.Module, str], bool]
) -> tuple[nn.Module, dict[str, str], str, list[str]]:
    """quantize_ a copy of ``original``; when it raises, find which modules raise and skip those.

    Returns (quantized copy, {fqn: error} for modules torchao refused, the whole-model error or "",
    torchao's log lines).
    """
    from torchao.quantization import quantize_

    model = copy.deepcopy(original)
    with _collect_torchao_logs() as logs:
        try:
            quantize_(model, config, filter_fn=filter_fn)
            return model, {}, "", list(dict.fromkeys(logs))
        except Exception as error:  # noqa: BLE001 - torchao's refusal is a result to report
            whole_error = _format_error(error)
        # The model may be half-quantized now: redo it one module at a time on fresh copies.
        module_errors: dict[str, str] = {}
        for fqn, module in original.named_modules():
            if not fqn or not filter_fn(module, fqn):
                continue
            try:
                quantize_(copy.deepcopy(module), config)
            except Exception as error:  # noqa: BLE001
                module_errors[fqn] = _format_error(error)
        model = copy.deepcopy(original)
        try:
            quantize_(model, config, filter_fn=lambda m, fqn: filter_fn(m, fqn) and fqn not in module_errors)
        except Exception as error:  # noqa: BLE001 - cannot be attributed to single modules
            return copy.deepcopy(original), module_errors, _format_error(error), list(dict.fromkeys(logs))
        return model, module_errors, whole_error, list(dict.fromkeys(logs))


def _likely_cause(
    snapshot: WeightSnapshot, spec: ConfigSpec, group_size: int, weight: torch.Tensor
) -> str | None:
    """The dtype or shape constraint of ``spec`` this weight breaks, if any."""
    if spec.needs_bf16_weight and snapshot.dtype != torch.bfloat16:
        return f"dtype: weight is {_dtype_name(snapshot.dtype)}, this config needs bfloat16"
    return spec.shape_rule(weight, group_size)


def infer_reason(
    snapshot: WeightSnapshot,
    module: nn.Module,
    fqn: str,
    spec: ConfigSpec,
    group_size: int,
    exclude_re: re.Pattern[str] | None,
    weight: torch.Tensor,
) -> str:
    """Why ``quantize_`` left this module's weight unchanged, as far as it can be told from outside."""
    if exclude_re is not None and exclude_re.search(fqn):
        return f"filtered out: name matches --exclude={exclude_re.pattern!r}"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "filtered out: NonDynamicallyQuantizableLinear is rejected by quantize_'s default filter_fn"
    if not isinstance(module, nn.Linear):
        return f"filtered out: {snapshot.module_type} is not nn.Linear (quantize_'s default filter_fn)"
    if snapshot.was_quantized:
        return f"already quantized before quantize_ ({snapshot.weight_class})"
    cause = _likely_cause(snapshot, spec, group_size, weight)
    if cause is not None:
        return cause
    return "unknown: quantize_ returned without changing the weight and torchao gave no reason"


def capture_layer_inputs(model: nn.Module, inputs: dict[str, Any], fqns: set[str]) -> dict[str, torch.Tensor]:
    """The first input each named module sees in one forward of ``model``."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for fqn, module in model.named_modules():
        if fqn in fqns:

            def hook(mod: nn.Module, args: tuple[Any, ...], fqn: str = fqn) -> None:
                if fqn not in captured and args and isinstance(args[0], torch.Tensor):
                    captured[fqn] = args[0].detach()

            handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model_output(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def reference_run(mut: ModelUnderTest) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The bf16 model's output and the input each of its nn.Linear modules sees, on ``mut.inputs``."""
    with torch.no_grad():
        reference_output = model_output(mut.model, mut.inputs)
    if not bool(torch.isfinite(reference_output).all()):
        raise ValueError(
            f"--model {mut.name}: the bf16 model's output has inf/nan on the seeded random inputs, so no "
            "SQNR can be measured against it: check the model's weights, or pass another --seed"
        )
    linear_fqns = {fqn for fqn, m in mut.model.named_modules() if isinstance(m, nn.Linear)}
    return reference_output, capture_layer_inputs(mut.model, mut.inputs, linear_fqns)


def run_config(
    spec: ConfigSpec,
    mut: ModelUnderTest,
    reference_output: torch.Tensor,
    layer_inputs: dict[str, torch.Tensor],
    *,
    device: torch.device,
    group_size: int,
    exclude_re: re.Pattern[str] | None,
    compile: bool,
    num_runs: int,
) -> ConfigResult:
    """Probe ``spec`` on the device, quantize a copy of the model, inspect it, measure SQNR and time."""
    label, config, runs_here, probe_errors = choose_variant(spec, group_size, device)
    # Run quantize_ on the model even when the device cannot run the config: silent skips happen
    # before torchao reaches the kernel it lacks, and they are part of the truth.
    before = snapshot_weights(mut.model)
    quantized, module_errors, whole_error, logs = quantize_with_attribution(
        mut.model, config, _make_filter(exclude_re)
    )
    rows = module_rows(before, quantized, module_errors, spec, group_size, exclude_re)
    result = ConfigResult(
        name=spec.name,
        description=spec.description,
        status="",
        variant=label,
        config_repr=repr(config),
        error=whole_error,
        probe_errors=probe_errors,
        torchao_log=logs,
        modules=rows,
        min_layer_sqnr_db=spec.min_layer_sqnr_db,
    )
    if not runs_here:
        result.status = "unsupported"
    elif result.num_quantized == 0:
        # "rejected": torchao raised for every module it was given; "no-op": it silently did nothing
        result.status = "rejected" if (module_errors or whole_error) else "no-op"
    elif measure(result, quantized, mut, reference_output, layer_inputs, device, compile, num_runs):
        result.status = final_status(result, spec, refused=bool(module_errors or whole_error))
    return result


def choose_variant(
    spec: ConfigSpec, group_size: int, device: torch.device
) -> tuple[str, Any, bool, list[str]]:
    """(label, config) of the first of ``spec``'s variants that quantizes and runs a probe Linear on
    ``device`` (else the first variant), whether one does, and the probe errors of those before it."""
    from hf_torchao_vllm.quantization.recipes import probe_config

    probe_errors = []
    variants = spec.build_variants(group_size, device)
    for label, config in variants:
        try:
            probe_config(config, device)  # quantizes and runs a bf16 Linear(256 -> 128)
        except Exception as error:  # noqa: BLE001 - device support is what we are asking about
            probe_errors.append(f"[{label}] {_format_error(error)}")
            continue
        return label, config, True, probe_errors
    label, config = variants[0]
    return label, config, False, probe_errors


def module_rows(
    before: dict[str, WeightSnapshot],
    quantized: nn.Module,
    module_errors: dict[str, str],
    spec: ConfigSpec,
    group_size: int,
    exclude_re: re.Pattern[str] | None,
) -> list[ModuleRow]:
    """One row per weighted module of the bf16 model: what quantize_ made of it, and why."""
    q_modules = dict(_weighted_modules(quantized))
    rows = []
    for fqn, snap in before.items():
        if fqn not in q_modules:  # quantize_ swapped the module for one without a plain `weight`
            rows.append(_replaced_row(fqn, snap, quantized.get_submodule(fqn)))
            continue
        module = q_modules[fqn]
        weight = module.weight
        changed = type(weight).__name__ != snap.weight_class or weight.dtype != snap.dtype
        if fqn in module_errors:
            status = "error"
            hint = _likely_cause(snap, spec, group_size, weight) if isinstance(module, nn.Linear) else None
            reason = f"quantize_ raised {module_errors[fqn]}" + (f" (likely {hint})" if hint else "")
        elif changed:
            status, reason = "quantized", ""
        else:
            status = "skipped"
            reason = infer_reason(snap, module, fqn, spec, group_size, exclude_re, weight)
        rows.append(
            ModuleRow(
                **_before_columns(fqn, snap),
                status=status,
                weight_class=type(weight).__name__,
                stored=describe_stored(weight),
                element_dtype=element_dtype(weight) if changed else _dtype_name(weight.dtype),
                granularity=describe_granularity(weight) if changed else "-",
                activation=describe_activation(weight) if changed else "-",
                bytes_after=weight_bytes(weight),
                reason=reason,
                layer_sqnr_db=None,
            )
        )
    return rows


def _replaced_row(fqn: str, snap: WeightSnapshot, replacement: nn.Module) -> ModuleRow:
    replaced_by = type(replacement).__name__
    return ModuleRow(
        **_before_columns(fqn, snap),
        status="replaced",
        weight_class=replaced_by,
        stored="-",
        element_dtype="-",
        granularity="-",
        activation="-",
        bytes_after=sum(weight_bytes(p) for p in replacement.parameters()),
        reason=f"module replaced by {replaced_by}; its parameters are counted, not inspected",
        layer_sqnr_db=None,
    )


def sqnr_db(reference: torch.Tensor, output: torch.Tensor) -> float:
    """``compute_sqnr``, with a quantized output holding inf/nan as -inf dB: the worst value, below
    every threshold, so the config is reported as ``low-sqnr`` instead of ending the run (torchao 0.18's
    float8 weight-only config turns an all-zero weight row into NaN: scale 0, 0 / 0)."""
    from pytorch_scripts_common import compute_sqnr

    if not bool(torch.isfinite(output).all()):
        return -math.inf
    return compute_sqnr(reference, output)


def _non_finite_note(output: torch.Tensor) -> str:
    return f"output has inf/nan in {int((~torch.isfinite(output)).sum())} of {output.numel()} values"


@torch.no_grad()
def measure(
    result: ConfigResult,
    quantized: nn.Module,
    mut: ModelUnderTest,
    reference_output: torch.Tensor,
    layer_inputs: dict[str, torch.Tensor],
    device: torch.device,
    compile: bool,
    num_runs: int,
) -> bool:
    """Fill ``result``'s layer and model SQNR and timings; False (status forward-error) when the
    quantized model's forward raises."""
    from pytorch_scripts_common import benchmark

    for row in result.modules:
        if row.status == "quantized" and row.fqn in layer_inputs:
            x = layer_inputs[row.fqn]
            reference = mut.model.get_submodule(row.fqn)(x)
            layer_output = quantized.get_submodule(row.fqn)(x)
            row.layer_sqnr_db = sqnr_db(reference, layer_output)
            if row.layer_sqnr_db == -math.inf:
                row.reason = _non_finite_note(layer_output)
    try:
        output = model_output(quantized, mut.inputs)
    except Exception as error:  # noqa: BLE001 - torchao's kernel refusing this model is a result
        result.status = "forward-error"
        result.error = f"forward raised {_format_error(error)}"
        return False
    result.model_sqnr_db = sqnr_db(reference_output, output)
    if result.model_sqnr_db == -math.inf:
        result.error = result.error or f"model {_non_finite_note(output)}"
    result.eager = Timing.of(
        benchmark(lambda: model_output(quantized, mut.inputs), num_warmup=2, num_runs=num_runs, device=device)
    )
    if compile:
        _time_compiled(result, quantized, mut, reference_output, device, num_runs)
    return True


def final_status(result: ConfigResult, spec: ConfigSpec, refused: bool) -> str:
    """low-sqnr below the recipe's floor (or an inf/nan output, eager or compiled), partial when
    torchao refused some modules, else ok."""
    if result.worst_layer_sqnr_db is not None and result.worst_layer_sqnr_db < spec.min_layer_sqnr_db:
        return "low-sqnr"
    if -math.inf in (result.model_sqnr_db, result.compiled_sqnr_db):
        return "low-sqnr"
    return "partial" if refused else "ok"


def _time_compiled(
    result: ConfigResult,
    model: nn.Module,
    mut: ModelUnderTest,
    reference_output: torch.Tensor,
    device: torch.device,
    num_runs: int,
) -> None:
    """Fill the compiled columns of ``result`` (or its compile_error; compiling is allowed to fail)."""
    from pytorch_scripts_common import benchmark

    # A fresh dynamo cache per config: the models share forward code, so without a reset later
    # configs could hit the recompile limit and silently run eagerly.
    torch._dynamo.reset()
    compiled = torch.compile(model)
    try:
        start_s = time.perf_counter()
        output = model_output(compiled, mut.inputs)
        result.compile_s = time.perf_counter() - start_s
        result.compiled_sqnr_db = sqnr_db(reference_output, output)
        if result.compiled_sqnr_db == -math.inf:
            result.error = result.error or f"compiled model {_non_finite_note(output)}"
        timing = benchmark(
            lambda: model_output(compiled, mut.inputs), num_warmup=2, num_runs=num_runs, device=device
        )
        result.compiled = Timing.of(timing)
    except Exception as error:  # noqa: BLE001 - report, keep going
        result.compile_error = _format_error(error)


def run_autoquant(mut: ModelUnderTest, reference_output: torch.Tensor) -> dict[str, Any]:
    """Run ``torchao.autoquant`` when this torchao has it; otherwise say why not."""
    import torchao

    autoquant = getattr(torchao, "autoquant", None)
    if autoquant is None:
        return {
            "status": "unavailable",
            "reason": (
                f"torchao {torchao.__version__} has no torchao.autoquant (this release does not ship "
                "autoquant), so there is nothing to run; pick a config from the table instead"
            ),
        }
    model = copy.deepcopy(mut.model)
    try:
        model = autoquant(torch.compile(model))
        with torch.no_grad():
            output = model_output(model, mut.inputs)  # the first call measures and picks kernels
            output = model_output(model, mut.inputs)
    except Exception as error:  # noqa: BLE001 - report, keep going
        return {"status": "unsupported", "reason": _format_error(error)}
    classes = sorted({type(m.weight).__name__ for _, m in _weighted_modules(model)})
    return {
        "status": "ok",
        "reason": "",
        "model_sqnr_db": sqnr_db(reference_output, output),
        "weight_classes": classes,
    }


# ----------------------------------------------------------------------------------------------
# Reporting


def _fmt_db(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"  # inf (identical) and -inf (no signal left) as such


def _fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _add_plain_row(table: Any, *cells: str) -> None:
    """Add a row whose cells are shown verbatim (torchao messages contain [brackets] rich would eat)."""
    from rich.text import Text

    table.add_row(*(Text(cell) for cell in cells))


def _print_config(console: Any, result: ConfigResult) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.rule(f"[bold]{result.name}[/]: {result.description}")
    console.print(f"config used: {result.config_repr}  (variant: {result.variant})")
    for line in result.probe_errors:
        console.print(f"[yellow]probe on this device failed[/] {escape(line)}", highlight=False)
    if result.error:
        console.print(f"[red]quantize_/forward error:[/] {escape(result.error)}", highlight=False)
    for line in result.torchao_log:
        console.print(f"torchao log: {line}", markup=False, highlight=False)
    table = Table(show_lines=False)
    for column in (
        "module",
        "type",
        "before",
        "status",
        "weight class",
        "stored tensors",
        "elem",
        "granularity",
        "activation",
        "bytes before->after",
        "layer SQNR dB",
    ):
        table.add_column(column, overflow="fold")
    for row in result.modules:
        status = row.status if not row.reason else f"{row.status}: {row.reason}"
        _add_plain_row(
            table,
            row.fqn,
            row.module_type,
            f"{row.dtype_before} {row.shape}",
            status,
            row.weight_class,
            row.stored,
            row.element_dtype,
            row.granularity,
            row.activation,
            f"{row.bytes_before} -> {row.bytes_after}",
            _fmt_db(row.layer_sqnr_db),
        )
    console.print(table)


def _print_summary(console: Any, results: list[ConfigResult], baseline: ConfigResult) -> None:
    from rich.table import Table

    table = Table(
        title="summary (SQNR in dB vs the bf16 model on the same inputs; times: median [min-max] ms, "
        "a ratio is unreliable when a spread is larger than the difference of the medians)"
    )
    for column in (
        "config",
        "status",
        "quantized / weighted modules",
        "weight bytes",
        "worst layer SQNR dB",
        "needed",
        "model SQNR dB",
        "eager ms (x bf16)",
        "compiled ms (x bf16)",
        "note",
    ):
        table.add_column(column, overflow="fold")
    base_compiled = compare_timing(baseline.compiled, None)
    _add_plain_row(
        table,
        "bf16",
        "baseline",
        "-",
        "-",
        "-",
        "-",
        "-",
        compare_timing(baseline.eager, None),
        base_compiled,
        "",
    )
    for r in results:
        before = sum(row.bytes_before for row in r.modules)
        after = sum(row.bytes_after for row in r.modules)
        compiled = compare_timing(r.compiled, baseline.compiled)
        if r.compiled is None:
            compiled = "failed" if r.compile_error else "-"
        if r.status == "unsupported":
            note = "; ".join(r.probe_errors) or r.error
        elif r.status == "no-op":
            note = "quantize_ changed no weight"
        else:
            note = r.error or r.compile_error
        _add_plain_row(
            table,
            r.name,
            r.status,
            f"{r.num_quantized} / {len(r.modules)}",
            f"{before} -> {after}",
            _fmt_db(r.worst_layer_sqnr_db),
            _fmt_db(r.min_layer_sqnr_db),
            _fmt_db(r.model_sqnr_db),
            compare_timing(r.eager, baseline.eager),
            compiled,
            note,
        )
    console.print(table)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _parse_configs(configs: str | tuple[str, ...] | list[str]) -> list[str]:
    from pytorch_scripts_common.cli import parse_list

    names = (
        [str(n).strip() for n in parse_list(configs, str, name="configs") if str(n).strip()]
        if configs
        else []
    )
    if names == ["all"]:
        return list(CONFIG_REGISTRY)
    unknown = [name for name in names if name not in CONFIG_REGISTRY]
    if unknown or not names:
        raise ValueError(
            f"--configs {configs!r}: unknown {unknown}: use 'all' or a comma list of {list(CONFIG_REGISTRY)}"
        )
    return names


def _resolve_device(device: str) -> torch.device:
    from pytorch_scripts_common import get_device

    if not device:
        return get_device()
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        raise ValueError(
            f"--device {device!r}: only cpu, cuda and cuda:<index> are supported: pass --device=cpu "
            "or --device=cuda"
        )
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: CUDA is not available on this machine: use --device=cpu")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s): "
            f"pass --device=cuda:<0..{torch.cuda.device_count() - 1}>"
        )
    return resolved


@dataclasses.dataclass(frozen=True)
class Arguments:
    config_names: list[str]
    device: torch.device
    exclude_re: re.Pattern[str] | None
    output_dir: Path | None


def check_arguments(
    configs: str, device: str, group_size: int, exclude: str, batch_size: int, seq_len: int, num_runs: int,
    output_dir: str, overwrite: bool,
) -> Arguments:  # fmt: skip
    """Every argument checked before the slow imports, so that a mistake fails in about a second."""
    config_names = _parse_configs(configs)
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"--group_size {group_size}: choose one of {SUPPORTED_GROUP_SIZES}")
    if batch_size < 1 or seq_len < 1 or num_runs < 1:
        raise ValueError(
            f"--batch_size/--seq_len/--num_runs must be >= 1, got {batch_size}/{seq_len}/{num_runs}"
        )
    try:
        # fire turns `--exclude=0` into the int 0, so compare against "" after str(), not by truthiness
        exclude_re = re.compile(str(exclude)) if str(exclude) != "" else None
    except re.error as error:
        raise ValueError(f"--exclude {exclude!r} is not a valid regex ({error}): fix the regex") from error
    out_dir = None
    if output_dir:
        from pytorch_scripts_common.outputs import check_output

        out_dir = Path(output_dir)
        check_output(
            out_dir / "report.json", overwrite=overwrite, tool="test_ao", kind="file", flag="output_dir"
        )
    return Arguments(config_names, _resolve_device(device), exclude_re, out_dir)


def measure_baseline(
    mut: ModelUnderTest, reference_output: torch.Tensor, device, compile: bool, num_runs: int
):
    """The bf16 model's eager (and compiled) timing, as a ``ConfigResult`` row."""
    from pytorch_scripts_common import benchmark

    baseline = ConfigResult("bf16", "", "baseline", "", "", "", [], [], [], 0.0)
    baseline.eager = Timing.of(
        benchmark(lambda: model_output(mut.model, mut.inputs), num_warmup=2, num_runs=num_runs, device=device)
    )
    if compile:
        with torch.no_grad():
            _time_compiled(baseline, mut.model, mut, reference_output, device, num_runs)
        if baseline.compile_error:
            raise RuntimeError(f"torch.compile of the bf16 model failed: {baseline.compile_error}")
    return baseline


def write_json_report(args: Arguments, mut, group_size, seed, baseline, results, autoquant_result) -> None:
    import torchao

    from pytorch_scripts_common.outputs import staged_file

    report = {
        "model": mut.name,
        "device": str(args.device),
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "group_size": group_size,
        "seed": seed,
        "load_average": list(os.getloadavg()),
        "baseline": {"eager": baseline.eager, "compiled": baseline.compiled, "compile_s": baseline.compile_s},
        "configs": [
            dataclasses.asdict(r)
            | {
                "num_quantized": r.num_quantized,
                "num_linear": r.num_linear,
                "worst_layer_sqnr_db": r.worst_layer_sqnr_db,
            }
            for r in results
        ],
        "autoquant": autoquant_result,
    }
    target = args.output_dir / "report.json"
    with staged_file(target) as staging:
        staging.write_text(json.dumps(_jsonable(report), indent=2))
    print(f"wrote {target}")


def fail_on_low_sqnr(console: Any, results: list[ConfigResult]) -> None:
    low = [r for r in results if r.status == "low-sqnr"]
    if low:
        details = ", ".join(
            f"{r.name} {r.worst_layer_sqnr_db:.1f} dB < {r.min_layer_sqnr_db} dB" for r in low
        )
        console.print(
            f"FAILED: a quantized layer's output SQNR is below its config's threshold: {details}",
            style="bold red",
            highlight=False,
        )
        raise SystemExit(1)


def main(
    model: str = "small",
    configs: str = "all",
    use_autoquant: bool = False,
    compile: bool = False,
    device: str = "",
    group_size: int = 32,
    exclude: str = "",
    batch_size: int = 8,
    seq_len: int = 32,
    num_runs: int = 5,
    seed: int = 0,
    check_sqnr: bool = True,
    output_dir: str = "",
    overwrite: bool = False,
) -> None:
    """Run a model through torchao configs and report what quantize_ really did to each module.

    Args:
        model: small | large | odd_shapes (bf16 toys), embedded (repo's tiny HF model) or a local HF folder
        configs: all, or a comma-separated list of names from the config registry (int8wo,int8dq,int4wo,...)
        use_autoquant: also run torchao.autoquant, or report why it cannot run
        compile: also time each quantized model under torch.compile (slow on CPU: ~10-30 s per config)
        device: cuda or cpu; default cuda when available, else cpu
        group_size: group size of the int4 / intx configs (32, 64, 128 or 256)
        exclude: regex over module names; matching modules are filtered out of quantize_
        batch_size: rows of the random input (toys) or sequences (HF models)
        seq_len: tokens per sequence for HF models
        num_runs: timed runs per forward measurement (median and min-max reported, after 2 warm-up runs)
        seed: seed of the model weights and random inputs
        check_sqnr: exit non-zero when a quantized layer's output SQNR is below its config's threshold
        output_dir: when set, write report.json there
        overwrite: allow replacing an existing report.json in output_dir
    """
    args = check_arguments(
        configs, device, group_size, exclude, batch_size, seq_len, num_runs, output_dir, overwrite
    )
    from rich.console import Console

    from pytorch_scripts_common import set_seed

    set_seed(seed)
    console = Console(width=200)
    mut = load_model(str(model), args.device, batch_size, seq_len, torch.bfloat16)
    print_header(console, mut, args.device, group_size, num_runs)
    reference_output, layer_inputs = reference_run(mut)
    baseline = measure_baseline(mut, reference_output, args.device, compile, num_runs)
    results = run_configs(
        console, args, mut, reference_output, layer_inputs, group_size, compile, num_runs, seed
    )
    autoquant_result = run_autoquant(mut, reference_output) if use_autoquant else None
    console.rule("[bold]all configs[/]")
    _print_summary(console, results, baseline)
    if autoquant_result is not None:
        console.print(
            f"autoquant: {autoquant_result['status']} {autoquant_result.get('reason', '')}", highlight=False
        )
    if args.output_dir is not None:
        write_json_report(args, mut, group_size, seed, baseline, results, autoquant_result)
    if check_sqnr:
        fail_on_low_sqnr(console, results)


def print_header(
    console: Any, mut: ModelUnderTest, device: torch.device, group_size: int, num_runs: int
) -> None:
    import torchao

    shapes = {k: tuple(v.shape) for k, v in mut.inputs.items() if isinstance(v, torch.Tensor)}
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    console.print(
        f"model {mut.name} on {device}; torch {torch.__version__}, torchao {torchao.__version__}; "
        f"inputs {shapes}; "
        f"group_size {group_size}; timings: median and min-max of {num_runs} runs after 2 warm-up runs; "
        f"load average {load}",
        highlight=False,
    )


def run_configs(console, args, mut, reference_output, layer_inputs, group_size, compile, num_runs, seed):
    from pytorch_scripts_common import set_seed

    results = []
    for index, name in enumerate(args.config_names, start=1):
        console.print(f"[{index}/{len(args.config_names)}] {name} ...", markup=False)
        set_seed(seed)
        result = run_config(
            CONFIG_REGISTRY[name],
            mut,
            reference_output,
            layer_inputs,
            device=args.device,
            group_size=group_size,
            exclude_re=args.exclude_re,
            compile=compile,
            num_runs=num_runs,
        )
        _print_config(console, result)
        results.append(result)
    return results


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
