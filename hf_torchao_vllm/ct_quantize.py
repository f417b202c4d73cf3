"""Minimal torchao quantization used by the converter pipeline and its tests.

``quantize_hf_model_with_torchao.py`` is the full tool (quality report, inspection, every recipe);
this module only produces torchao checkpoints in the exact format that tool writes
(``quantize_`` + ``TorchAoConfig`` + ``save_pretrained`` with safetensors) for the recipes the
converter maps, with generic module selection (regexes over module / parameter names).

Every torchao config comes from ``recipes.make_torchao_config`` (the tool's single registry):
``RECIPES`` below only names the (recipe, options) pairs the converter maps, so that callers can
say ``"fp8_per_row"`` instead of ``("fp8", RecipeOptions(granularity="per_row", ...))``.
Quantization always runs on CPU (the model is loaded there), so the configs are the CPU ones:
int4 is ``IntxWeightOnlyConfig`` (CUDA's ``Int4WeightOnlyConfig`` writes an ``Int4Tensor``, which
has no compressed-tensors equivalent) and fp8 sets ``activation_value_lb=1e-12`` (see recipes.py).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import torch

from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import publish
from hf_torchao_vllm.recipes import RecipeOptions, make_torchao_config, maybe_bypass_fp8_hardware_check

# Converter-facing name -> (recipes.py recipe, its options). Only schemes the converter maps.
# int4 uses group size 32 (recipes.py's default is 128): the mixed-precision and layout tests
# pin 32, and it divides every dimension of the tiny test models (multiples of 128).
# fp8 dynamic-activation recipes opt in to CPU emulation: quantizing weights on CPU only needs
# torchao's sm89+ GPU check bypassed. recipes.validate_recipe_options (the user-facing check of
# quantize_hf_model_with_torchao.py) is not applied here: it refuses fp8 a1x128_w128x128 on CPU
# because *running* it needs triton, while this module only quantizes and saves the weights.
RECIPES: dict[str, tuple[str, RecipeOptions]] = {
    "int8_dynamic_act_int8_weight": ("int8_dynamic_act_int8_weight", RecipeOptions()),
    "int8_weight_only": ("int8_weight_only", RecipeOptions()),
    "int4_weight_only": ("int4_weight_only", RecipeOptions(group_size=32)),
    "fp8_weight_only": ("fp8_weight_only", RecipeOptions()),
    "fp8_per_row": ("fp8", RecipeOptions(granularity="per_row", fp8_emulation_on_cpu=True)),
    "fp8_per_tensor": ("fp8", RecipeOptions(granularity="per_tensor", fp8_emulation_on_cpu=True)),
    "fp8_a1x128_w128x128": ("fp8", RecipeOptions(granularity="a1x128_w128x128", fp8_emulation_on_cpu=True)),
    "nvfp4_weight_only": ("nvfp4_weight_only", RecipeOptions()),
}

# ct_quantize always quantizes on CPU (see the module docstring).
DEVICE = torch.device("cpu")


def recipe_names() -> list[str]:
    return sorted(RECIPES)


def torchao_config(name: str):
    """The torchao config of converter recipe ``name``, built by ``recipes.make_torchao_config``."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {recipe_names()}")
    recipe, options = RECIPES[name]
    return make_torchao_config(recipe, options, DEVICE)


def _needs_fp8_bypass(name: str) -> bool:
    recipe, options = RECIPES[name]
    return recipe == "fp8" and options.fp8_emulation_on_cpu


def quantize_and_save(
    model_path: str,
    recipe: str,
    output_dir: str,
    module_regex: str | None = None,
    recipe_per_regex: dict[str, str | None] | None = None,
    max_shard_size: str | int = "5GB",
) -> str:
    """Quantize ``model_path`` with a converter recipe (a key of ``RECIPES``) and save it as a
    torchao checkpoint.

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

    names = [recipe] if recipe_per_regex is None else [r for r in recipe_per_regex.values() if r]
    configs = {name: torchao_config(name) for name in names}  # ValueError for unknown names first
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
    bypass = any(_needs_fp8_bypass(n) for n in names)
    if recipe_per_regex is None:
        config = configs[recipe]
        pattern = re.compile(module_regex) if module_regex else None

        def wanted(module: torch.nn.Module, fqn: str) -> bool:
            if not isinstance(module, torch.nn.Linear) or fqn == "lm_head":
                return False
            return pattern is None or pattern.search(fqn) is not None

        with maybe_bypass_fp8_hardware_check(bypass):
            quantize_(model, config, filter_fn=wanted)
    else:
        config = FqnToConfig({f"re:{rx}": (configs[r] if r else None) for rx, r in recipe_per_regex.items()})
        with maybe_bypass_fp8_hardware_check(bypass):
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
