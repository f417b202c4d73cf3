"""Minimal torchao quantization used by the converter pipeline and its tests.

``quantize_hf_model_with_torchao.py`` is the full tool (quality report, inspection, every recipe);
this module only produces torchao checkpoints in the exact format that tool writes
(``quantize_`` + ``TorchAoConfig`` + ``save_pretrained`` with safetensors) for the recipes the
converter maps, with generic module selection (regexes over module / parameter names).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import publish

# recipe name -> (factory of the torchao config, needs the fp8 hardware check bypassed on CPU)
RECIPES: dict[str, tuple[Callable[[], Any], bool]] = {}


def _register_recipes() -> None:
    if RECIPES:
        return
    from torchao.prototype.mx_formats import NVFP4WeightOnlyConfig
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerBlock,
        PerGroup,
        PerRow,
        PerTensor,
    )

    RECIPES.update(
        {
            "int8_dynamic_act_int8_weight": (Int8DynamicActivationInt8WeightConfig, False),
            "int8_weight_only": (Int8WeightOnlyConfig, False),
            "int4_weight_only": (
                lambda: IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
                False,
            ),
            "fp8_weight_only": (Float8WeightOnlyConfig, False),
            "fp8_per_row": (lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), True),
            "fp8_per_tensor": (
                lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
                True,
            ),
            "fp8_a1x128_w128x128": (
                lambda: Float8DynamicActivationFloat8WeightConfig(
                    granularity=[PerBlock([1, 128]), PerBlock([128, 128])]
                ),
                True,
            ),
            "nvfp4_weight_only": (NVFP4WeightOnlyConfig, False),
        }
    )


def recipe_names() -> list[str]:
    _register_recipes()
    return sorted(RECIPES)


@contextlib.contextmanager
def _fp8_emulation_on_cpu(enabled: bool):
    """torchao refuses fp8 dynamic quantization without an sm89+ GPU by a hardware check, although
    CPU ``torch._scaled_mm`` computes it (emulation). Only bypassed for recipes that need it, on CPU."""
    if not enabled or torch.cuda.is_available():
        yield
        return
    from unittest import mock

    with mock.patch("torchao.quantization.quant_api._check_hardware_support", lambda granularities: None):
        yield


def quantize_and_save(
    model_path: str,
    recipe: str,
    output_dir: str,
    module_regex: str | None = None,
    recipe_per_regex: dict[str, str | None] | None = None,
    max_shard_size: str | int = "5GB",
) -> str:
    """Quantize ``model_path`` with a torchao recipe and save it as a torchao checkpoint.

    ``module_regex``: only quantize Linear modules whose name matches (default: every Linear except
    ``lm_head``). ``recipe_per_regex``: mixed precision, ``{regex: recipe or None}`` as torchao's
    ``FqnToConfig`` (the regex must match the whole module or parameter name, the first match
    wins, ``None`` = keep in high precision); 3D MoE expert parameters are selected this way,
    e.g. ``r".*mlp\\.experts\\.(gate_up_proj|down_proj)"``.
    Files that are not weights (tokenizer, generation config) are copied.
    """
    from torchao.quantization import FqnToConfig, quantize_
    from transformers import AutoModelForCausalLM, TorchAoConfig
    from transformers.quantizers.auto import AutoHfQuantizer

    _register_recipes()
    names = [recipe] if recipe_per_regex is None else [r for r in recipe_per_regex.values() if r]
    for name in names:
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; choose one of {recipe_names()}")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    emulate = any(RECIPES[n][1] for n in names)
    if recipe_per_regex is None:
        config = RECIPES[recipe][0]()
        import re

        pattern = re.compile(module_regex) if module_regex else None

        def wanted(module: torch.nn.Module, fqn: str) -> bool:
            if not isinstance(module, torch.nn.Linear) or fqn == "lm_head":
                return False
            return pattern is None or pattern.search(fqn) is not None

        with _fp8_emulation_on_cpu(emulate):
            quantize_(model, config, filter_fn=wanted)
    else:
        config = FqnToConfig(
            {f"re:{rx}": (RECIPES[r][0]() if r else None) for rx, r in recipe_per_regex.items()}
        )
        with _fp8_emulation_on_cpu(emulate):
            quantize_(model, config, filter_fn=None)
    model.config.quantization_config = TorchAoConfig(config)
    # save_pretrained flattens torchao tensor subclasses only through the torchao HF quantizer.
    model.hf_quantizer = AutoHfQuantizer.from_config(model.config.quantization_config, pre_quantized=False)
    output_dir = os.path.abspath(output_dir)
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=os.path.dirname(output_dir))
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        for name in os.listdir(model_path):
            src = os.path.join(model_path, name)
            if (
                os.path.isfile(src)
                and not os.path.exists(os.path.join(tmp, name))
                and "safetensors" not in name
            ):
                shutil.copyfile(src, os.path.join(tmp, name))
        publish(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir
