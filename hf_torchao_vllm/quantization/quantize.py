"""The one torchao quantize path: plan -> load quantized -> verify -> save (servable config) -> reload.

``quantize_hf_model_with_torchao.py`` (the CLI, with generations and a quality report), the
pipeline, the conformance matrix, the benchmarks and the tests all call these functions.

- ``plan_quantization`` validates everything cheap before any weight is read: recipe and options,
  the model's config, the weight selection (``recipes.select_targets``), shapes, which torchao
  layout runs on the device (a probe Linear), and whether vLLM can serve the result
  (``vllm_support.torchao_serving_problem``).
- ``load_quantized_model`` quantizes on load through transformers' ``TorchAoConfig`` with an
  ``FqnToConfig`` over *parameter* names (``...q_proj\\.weight``): transformers applies a key that
  matches a module name to every parameter of the module, biases included.
- ``verify_quantized`` requires that exactly the selected weights became torchao tensors (torchao
  skips some shapes silently).
- ``save_checkpoint`` writes safetensors and a ``quantization_config`` in the form vLLM's torchao
  loader reads (see ``serving_config``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hf_torchao_vllm.quantization import recipes

REPORT_FILE = "quantization_report.json"
TOOL = "hf_torchao_vllm.quantize"  # the output marker of every checkpoint this path writes


@dataclasses.dataclass
class Plan:
    """Everything decided before weights are read."""

    model_source: str
    config: Any  # transformers PretrainedConfig
    recipe: recipes.Recipe
    options: recipes.RecipeOptions
    device: torch.device
    selection: recipes.Selection
    recipe_by_target: dict[str, str]  # selected target name -> recipe name
    configs_by_param: dict[str, Any]  # selected parameter name -> torchao config
    variants: dict[str, recipes.Variant]  # recipe name -> the torchao layout chosen on this device
    all_param_names: list[str]
    vllm_problem: str | None  # why vLLM (torchao quant_method) cannot serve the result, or None

    @property
    def quantizes(self) -> bool:
        return bool(self.configs_by_param)

    @property
    def load_kwargs(self) -> dict[str, Any]:
        """transformers' grouped-mm experts kernel transposes the 3D weight, which torchao tensors do
        not implement; the eager per-expert loop calls F.linear on expert slices, which they do."""
        has_3d = any(self.selection.targets[name].is_3d for name in self.recipe_by_target)
        return {"experts_implementation": "eager"} if has_3d else {}


def resolve_model_source(model: str) -> str:
    """``model`` if it is an existing local directory or plausibly a Hub id; else a ``ValueError``."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model directory {model!r} has no config.json: pass an HF model directory or id"
            )
        return str(path)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep + os.sep in model
    if looks_local or not model:
        raise ValueError(
            f"model path {model!r} does not exist: pass an existing HF model directory or a Hub id"
        )
    return model  # a Hub id: from_pretrained reports whether it can be fetched


def load_causal_lm_config(model: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"cannot load a transformers config from {model!r} ({first}): pass a model directory"
        ) from error
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(
            f"{model!r} is not a causal LM (model_type={config.model_type!r}, "
            f"architectures={getattr(config, 'architectures', None)}): "
            "this tool quantizes *ForCausalLM models"
        )
    quantized = getattr(config, "quantization_config", None)
    if quantized is not None:
        # transformers would either reload the stored torchao tensors as if they were the bf16
        # reference and fail only at save, or refuse the TorchAoConfig with its own message
        method = quantized.get("quant_method") if isinstance(quantized, dict) else None
        method = method or getattr(quantized, "quant_method", None)
        raise ValueError(
            f"{model!r} is already quantized (quant_method {str(method)!r} in its config.json): "
            "pass the bf16 / float checkpoint it was quantized from"
        )
    return config


def meta_model(config) -> torch.nn.Module:
    """The model's module tree on the meta device: names, types and shapes without memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


def _apply_overrides(
    selection: recipes.Selection, recipe: str, overrides: Sequence[tuple[str, str | None]]
) -> tuple[dict[str, str], dict[str, str]]:
    """Recipe per selected target: the first override regex (``re.search``) that matches wins,
    ``None`` keeps the weight in high precision; the rest get ``recipe``. Returns (recipe by target,
    extra skip reasons)."""
    compiled = []
    for pattern, name in overrides:
        try:
            compiled.append((re.compile(pattern), name))
        except re.error as error:
            raise ValueError(
                f"override pattern {pattern!r} is not a valid regex ({error}): fix the regex"
            ) from error
    chosen, skipped = {}, {}
    for target in selection.selected:
        name = recipe
        for regex, override in compiled:
            if regex.search(target.name):
                name = override
                break
        if name is None:
            skipped[target.name] = "kept in high precision by an override"
        elif name != "none":
            chosen[target.name] = name
    return chosen, skipped


def split_by_checkpoint_conversion(model_type: str, targets: list[recipes.QuantTarget]) -> list[str]:
    """Selected Linear weights transformers splits out of a fused checkpoint tensor while loading."""
    from hf_torchao_vllm.conversion.checkpoint_names import split_on_load

    split = set(split_on_load(model_type, [t.param_name for t in targets if not t.is_3d]))
    return [t.name for t in targets if t.param_name in split]


def check_checkpoint_conversion(model_type: str, targets: list[recipes.QuantTarget]) -> None:
    """A ``ValueError`` for weights transformers splits while loading: its torchao quantize-on-load then
    leaves some of them bf16, and saving concatenates them back."""
    split = split_by_checkpoint_conversion(model_type, targets)
    if split:
        raise ValueError(
            f"transformers loads {model_type} checkpoints by splitting fused tensors into {len(split)} "
            f"selected weights (e.g. {split[0]}), and its torchao quantize-on-load and save do not carry "
            "quantized tensors through that split: keep them bf16 with --skip=<regex>"
        )


def plan_quantization(
    model: str,
    recipe: str,
    options: recipes.RecipeOptions | None = None,
    modules: str = "all",
    skip: Sequence[str] = (),
    quantize_lm_head: bool = False,
    quantize_routers: bool = False,
    overrides: Sequence[tuple[str, str | None]] = (),
    device: torch.device | None = None,
    run_probe: bool = True,
) -> Plan:
    """Validate and decide everything before weights are read; ``ValueError`` for user mistakes.

    ``run_probe=False`` only checks that each torchao layout quantizes on ``device`` (not that it runs
    there): the converter's tests save CPU checkpoints of recipes that only run on CUDA."""
    from hf_torchao_vllm.serving import vllm_support

    device = device or torch.device("cpu")
    entry = recipes.validate_recipe_options(recipe, options or recipes.RecipeOptions(), device)
    options = recipes.resolve(recipe, options)[1]
    for _, name in overrides:
        if name is not None:
            recipes.validate_recipe_options(name, options, device)
    model_source = resolve_model_source(model)
    config = load_causal_lm_config(model_source)
    if Path(model_source).is_dir():
        from hf_torchao_vllm.conversion.checkpoint_reader import check_weight_files

        check_weight_files(model_source)
    skeleton = meta_model(config)
    selection = recipes.select_targets(skeleton, modules, list(skip), quantize_lm_head, quantize_routers)
    recipe_by_target, override_skips = _apply_overrides(selection, entry.name, overrides)
    if override_skips:
        selected = [t for t in selection.selected if t.name not in override_skips]
        selection = recipes.Selection(selected, {**selection.skipped, **override_skips}, selection.targets)
    if entry.name != "none" and not recipe_by_target:
        raise ValueError(
            f"--modules={modules} with --skip={list(skip)} selects no weight of {model_source}: "
            "choose another selector or fewer skip patterns"
        )
    check_checkpoint_conversion(config.model_type, [selection.targets[t] for t in recipe_by_target])
    variants, configs_by_param = {}, {}
    for name in sorted(set(recipe_by_target.values())):
        sub_recipe, sub_options = recipes.resolve(name, options)
        targets = [selection.targets[t] for t, r in recipe_by_target.items() if r == name]
        recipes.check_shapes(sub_recipe, sub_options, targets)
        variant = recipes.choose_variant(sub_recipe, sub_options, device, run_probe=run_probe)
        if variant.config is None:
            raise ValueError(
                f"recipe {name!r} does not run on {device.type} with this torchao: "
                f"{'; '.join(variant.probe_errors)}: "
                f"choose one of {', '.join(recipes.cpu_capable_recipes(options))}"
            )
        variants[name] = variant
        for target in targets:
            configs_by_param[target.param_name] = variant.config
    all_param_names = [n for n, _ in skeleton.named_parameters()]
    plan = Plan(
        model_source, config, entry, options, device, selection, recipe_by_target, configs_by_param,
        variants, all_param_names, vllm_problem=None,
    )  # fmt: skip
    plan.vllm_problem = vllm_support.torchao_serving_problem(
        architecture=(getattr(config, "architectures", None) or [type(skeleton).__name__])[0],
        quantized=set(configs_by_param),
        serving=serving_quantization_dict(plan),
        device=device,
        all_modules={n for n, _ in skeleton.named_modules()},
        out_features={
            plan.selection.targets[t].module_name: plan.selection.targets[t].shape[-2]
            for t in recipe_by_target
        },
    )
    return plan


def not_converted_modules(plan: Plan) -> list[str]:
    """Module names that stay high precision, as ``modules_to_not_convert``: every skipped 2D weight's
    module, plus vLLM's fused name (e.g. ``self_attn.qkv_proj``) where all of its parts are skipped,
    so that vLLM's exact-name ``should_skip`` leaves the fused layer alone too."""
    from hf_torchao_vllm.serving import vllm_support

    modules = {
        plan.selection.targets[name].module_name
        for name in plan.selection.skipped
        if not plan.selection.targets[name].is_3d
    }
    return sorted(modules | vllm_support.fused_names_of_skipped(modules))


def serving_quantization_config(plan: Plan):
    """The ``TorchAoConfig`` written to config.json.

    vLLM's torchao loader matches ``FqnToConfig`` keys against *its* layer names, which fuse q/k/v
    into ``qkv_proj`` and gate/up into ``gate_up_proj``, so HF-name keys leave those layers
    unquantized and loading the quantized weights into them fails. One recipe on Linear weights is
    therefore written the way torchao checkpoints on the Hub are: the plain config, applied by vLLM to
    every linear layer not in ``modules_to_not_convert``. Mixed recipes and 3D experts keep the
    parameter-name ``FqnToConfig`` (transformers reloads it; vLLM cannot serve it, and the plan says
    so before writing).
    """
    from transformers import TorchAoConfig

    not_convert = not_converted_modules(plan)
    distinct = {id(c): c for c in plan.configs_by_param.values()}
    only_linear = all(
        not plan.selection.targets[t].is_3d and plan.selection.targets[t].param_name.endswith(".weight")
        for t in plan.recipe_by_target
    )
    if len(distinct) == 1 and only_linear:
        (config,) = distinct.values()
        return TorchAoConfig(config, modules_to_not_convert=not_convert)
    fqn_config = recipes.build_fqn_to_config(plan.configs_by_param, plan.all_param_names)
    return TorchAoConfig(fqn_config, modules_to_not_convert=not_convert)


def serving_quantization_dict(plan: Plan) -> dict[str, Any] | None:
    return serving_quantization_config(plan).to_dict() if plan.quantizes else None


def load_quantized_model(plan: Plan, device: torch.device | None = None):
    """The model in bf16 with the plan's weights quantized on load, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    device = device or plan.device
    if not plan.quantizes:
        model = AutoModelForCausalLM.from_pretrained(
            plan.model_source, dtype=torch.bfloat16, **plan.load_kwargs
        )
        return model.to(device).eval()
    fqn_config = recipes.build_fqn_to_config(plan.configs_by_param, plan.all_param_names)
    # modules_to_not_convert=[]: the parameter-name keys already say exactly what is quantized, and
    # transformers reads this list as prefix regexes ("mlp.gate" would also exclude "mlp.gate_proj").
    quantization_config = TorchAoConfig(fqn_config, modules_to_not_convert=[])
    bypass = device.type != "cuda" and any(recipes.resolve(r)[0].name == "fp8" for r in plan.variants)
    with recipes.maybe_bypass_fp8_hardware_check(bypass):
        model, info = AutoModelForCausalLM.from_pretrained(
            plan.model_source,
            dtype=torch.bfloat16,
            quantization_config=quantization_config,
            output_loading_info=True,
            **plan.load_kwargs,
        )
    if info["missing_keys"]:
        # transformers only warns ("MISSING ... newly initialized"); the checkpoint would hold random
        # weights. Seen with HRM: weights its checkpoint conversion chunks out of one stored tensor.
        missing = sorted(info["missing_keys"])
        raise ValueError(
            f"transformers' quantize-on-load (TorchAoConfig) of {plan.model_source} leaves "
            f"{len(missing)} weight(s) randomly initialized (e.g. {missing[0]}), although a plain load "
            "reads them: this architecture cannot be quantized through transformers"
        )
    return model.to(device).eval()


def quantized_weight_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Target name (module for nn.Linear weights, parameter otherwise) -> torchao tensor."""
    from torchao.utils import TorchAOBaseTensor

    found = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if isinstance(param, TorchAOBaseTensor) or isinstance(
                getattr(param, "data", None), TorchAOBaseTensor
            ):
                is_linear_weight = isinstance(module, torch.nn.Linear) and param_name == "weight"
                found[module_name if is_linear_weight else f"{module_name}.{param_name}"] = param
    return found


def verify_quantized(model: torch.nn.Module, plan: Plan) -> None:
    """``RuntimeError`` unless exactly the selected weights became torchao tensors."""
    got = set(quantized_weight_names(model))
    want = set(plan.recipe_by_target)
    if got != want:
        raise RuntimeError(
            f"recipe {plan.recipe.name!r} did not quantize exactly the selected weights: missing "
            f"{sorted(want - got)[:8]}, unexpected {sorted(got - want)[:8]} "
            "(torchao skips some shapes silently)"
        )


def save_checkpoint(model, plan: Plan, directory: Path, max_shard_size: str | int = "5GB") -> list[str]:
    """safetensors + config.json (serving ``quantization_config``) + every non-weight file of the
    source (tokenizer, generation config); returns the weight file names."""
    import shutil

    if plan.quantizes:
        serving = serving_quantization_config(plan)
        model.config.quantization_config = serving
        model.hf_quantizer.quantization_config = serving
    try:
        model.save_pretrained(directory, max_shard_size=max_shard_size)
    except Exception as error:  # noqa: BLE001 -- re-raised with the recipe named
        raise ValueError(
            f"recipe {plan.recipe.name!r}: torchao / transformers cannot serialize this model ({error}): "
            "choose another recipe"
        ) from error
    source = Path(plan.model_source)
    if source.is_dir():
        for item in source.iterdir():
            is_weights = (
                item.name.endswith((".safetensors", ".bin", ".pt", ".pth")) or "index.json" in item.name
            )
            # reports (e.g. the embedded models' training_report.json) describe the source, not this output
            is_report = item.name.endswith("_report.json") or item.name.startswith(".")
            if item.is_file() and not (is_weights or is_report) and not (directory / item.name).exists():
                shutil.copyfile(item, directory / item.name)
    return sorted(f.name for f in directory.iterdir() if f.name.endswith((".safetensors", ".bin")))


@torch.no_grad()
def logits(model, token_ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=token_ids[None].to(device)).logits.float().cpu()


def reload_and_compare(model, plan: Plan, directory: Path, token_ids: torch.Tensor) -> None:
    """Reload ``directory`` through transformers and require bit-identical logits on ``token_ids``."""
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16, **plan.load_kwargs)
    reloaded.to(next(model.parameters()).device).eval()
    in_memory, from_disk = logits(model, token_ids), logits(reloaded, token_ids)
    if not torch.equal(in_memory, from_disk):
        max_diff = (in_memory - from_disk).abs().max().item()
        raise RuntimeError(
            f"reloaded model's logits differ from the in-memory quantized model (max |diff| {max_diff})"
        )


def quantize_checkpoint(
    model: str,
    recipe: str,
    output_dir: str,
    options: recipes.RecipeOptions | None = None,
    modules: str = "all",
    skip: Sequence[str] = (),
    quantize_lm_head: bool = False,
    quantize_routers: bool = False,
    overrides: Sequence[tuple[str, str | None]] = (),
    overwrite: bool = False,
    forward_checks: bool = True,
    max_shard_size: str | int = "5GB",
    device: torch.device | None = None,
) -> Plan:
    """Quantize ``model`` and write a torchao checkpoint to ``output_dir`` (no quality report).

    ``forward_checks``: probe that the recipe runs on the device and reload with bit-identical
    logits; False only saves (recipes that run on CUDA only, quantized here for the converter)."""
    from pytorch_scripts_common.outputs import check_output, staged_dir

    plan = plan_quantization(
        model, recipe, options, modules, skip, quantize_lm_head, quantize_routers, overrides, device,
        run_probe=forward_checks,
    )  # fmt: skip
    target = check_output(
        output_dir, inputs=[plan.model_source], overwrite=overwrite, tool=TOOL, flag="output_dir"
    )
    quantized = load_quantized_model(plan)
    verify_quantized(quantized, plan)
    with staged_dir(target, tool=TOOL) as staging:
        save_checkpoint(quantized, plan, staging, max_shard_size=max_shard_size)
        if forward_checks:
            vocab = plan.config.get_text_config().vocab_size
            probe = torch.randint(0, vocab, (64,), generator=torch.Generator().manual_seed(0))
            reload_and_compare(quantized, plan, staging, probe)
    return plan


def load_reference_and_quantized(plan: Plan):
    """The tokenizer, the bf16 reference and the quantized model (verified: exactly the selected weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model_source)
    reference_model = AutoModelForCausalLM.from_pretrained(
        plan.model_source, dtype=torch.bfloat16, **plan.load_kwargs
    )
    quantized_model = load_quantized_model(plan)
    verify_quantized(quantized_model, plan)
    return tokenizer, reference_model.to(plan.device).eval(), quantized_model


def save_and_reload(console, quantized_model, plan: Plan, tokenizer, staging: Path) -> list[str]:
    """Save into ``staging``, reload, require bit-identical logits on held-out tokens."""
    from hf_torchao_vllm.quantization import quality

    weight_files = save_checkpoint(quantized_model, plan, staging)
    tokenizer.save_pretrained(staging)
    console.print(f"saved weights as {weight_files}")
    reload_and_compare(quantized_model, plan, staging, quality.held_out_token_ids(tokenizer, 128))
    console.print("reload check: logits of the reloaded model are bit-identical to the in-memory model")
    return weight_files
