"""Quantize a Hugging Face causal LM with a torchao recipe, check it, save it, reload it, report quality.

Steps (functions of ``hf_torchao_vllm.quantization``, whose ``quantize`` is the one quantize path
every tool uses): plan (recipe -> torchao config for this device, generic weight selection, shapes,
whether vLLM can serve the result) -> quantize on load -> verify exactly the selected weights became
torchao tensors -> per-weight summary -> greedy generations next to bf16 -> quality on held-out text
-> save into a staging folder -> reload with bit-identical logits -> publish ``output_dir``.

    python -m hf_torchao_vllm.quantize_hf_model_with_torchao --recipe=int8_weight_only
    python -m hf_torchao_vllm.quantize_hf_model_with_torchao \\
        --model=hf_torchao_vllm/embedded_models/moe --recipe=fp8_weight_only --modules=experts_only
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from hf_torchao_vllm.quantization import quantize
from hf_torchao_vllm.quantization.quantize import REPORT_FILE
from hf_torchao_vllm.tiny_models import EMBEDDED_DENSE

DEFAULT_MODEL = EMBEDDED_DENSE
DEFAULT_PROMPTS = ("The try statement", "A function definition defines", "Comparisons")
__all__ = ["DEFAULT_MODEL", "REPORT_FILE", "main"]


def main(
    model: str = DEFAULT_MODEL,
    recipe: str = "int8_weight_only",
    granularity: str | None = None,
    group_size: int | None = None,
    modules: str = "all",
    skip: str | tuple = (),
    quantize_lm_head: bool = False,
    quantize_routers: bool = False,
    fp8_emulation_on_cpu: bool = False,
    output_dir: str | None = None,
    overwrite: bool = False,
    prompts: str | tuple | None = None,
    max_new_tokens: int = 16,
    eval_tokens: int = 1024,
    seed: int = 0,
) -> str:
    """Quantize an HF causal LM with torchao, summarize, generate, evaluate, save, reload and verify.

    Args:
        model: HF model id or local directory (default: the embedded tiny dense Llama); also --model_name.
        recipe: recipe or alias (int8_weight_only, int4_weight_only, fp8, mxfp8, ...; see README); also
            --quant_type. (--save_model_to_disk=True is accepted: the model is always saved.)
        granularity: fp8 only, scaling granularity: per_row (default) | per_tensor | a1x128_w128x128.
        group_size: int4 recipes only, group size (default 128; must divide every selected in_features).
        modules: which weights to quantize: all | experts_only | mlp_only | skip_attention.
        skip: regex(es) on weight names to keep in bf16 (re.search), e.g. --skip='layers\\.0\\.'.
        quantize_lm_head: also quantize the output embedding (lm_head).
        quantize_routers: also quantize MoE routers / gates / shared-expert gates.
        fp8_emulation_on_cpu: fp8 only, run on CPU by bypassing torchao's hardware check (emulation, slow).
        output_dir: where to save (default outputs/hf_torchao_vllm/<model>-<recipe>).
        overwrite: replace an earlier output of this tool.
        prompts: prompt(s) for the greedy generation check (default: three fixed prompts).
        max_new_tokens: tokens generated per prompt.
        eval_tokens: held-out tokens for the quality report.
        seed: seed for everything random.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    from rich.console import Console

    from hf_torchao_vllm.quantization import quality as evaluate_quality
    from hf_torchao_vllm.quantization.report import print_summary, report_payload
    from pytorch_scripts_common import set_seed
    from pytorch_scripts_common.outputs import staged_dir

    console = Console(width=200)
    args = check_arguments(model, recipe, granularity, group_size, skip, fp8_emulation_on_cpu, output_dir,
                           overwrite, prompts, max_new_tokens, eval_tokens)  # fmt: skip
    plan = quantize.plan_quantization(
        args.model_source, recipe, args.options, modules, args.skip, quantize_lm_head, quantize_routers,
        device=args.device,
    )  # fmt: skip
    served = "can serve" if plan.vllm_problem is None else f"cannot serve ({plan.vllm_problem})"
    console.print(f"vLLM {served} this checkpoint", markup=False)
    set_seed(seed)
    tokenizer, reference_model, quantized_model = quantize.load_reference_and_quantized(plan)
    rows = print_summary(quantized_model, plan) if plan.quantizes else []
    generations = evaluate_quality.compare_generations(
        console, reference_model, quantized_model, tokenizer, args.prompts, max_new_tokens, plan.recipe.name
    )
    quality = evaluate_quality.evaluate(reference_model, quantized_model, tokenizer, max_tokens=eval_tokens)
    with staged_dir(args.target, tool=quantize.TOOL) as staging:
        weight_files = quantize.save_and_reload(console, quantized_model, plan, tokenizer, staging)
        quality = evaluate_quality.with_sizes(quality, plan.model_source, staging)
        evaluate_quality.print_report(
            quality, f"quality: {plan.recipe.name} vs bf16 ({plan.device}, torch {torch.__version__})"
        )
        selection = {
            "granularity": granularity,
            "group_size": group_size,
            "modules": modules,
            "skip": args.skip,
        }
        payload = report_payload(plan, selection, quality, rows, generations, weight_files)
        (staging / REPORT_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    console.print(
        f"wrote {args.target} (weights, config.json with the torchao quantization_config, {REPORT_FILE})"
    )
    return str(args.target)


@dataclasses.dataclass(frozen=True)
class Arguments:
    model_source: str
    options: Any
    skip: list[str]
    prompts: list[str]
    target: Path
    device: torch.device


def check_arguments(model, recipe, granularity, group_size, skip, fp8_emulation_on_cpu, output_dir, overwrite,
                    prompts, max_new_tokens, eval_tokens) -> Arguments:  # fmt: skip
    """Every argument checked before weights are read; the output before the recipe is resolved, so a
    mistake there costs no torchao import."""
    from hf_torchao_vllm.quantization.recipes import RecipeOptions, check_options_apply
    from pytorch_scripts_common import get_device
    from pytorch_scripts_common.cli import UsageError, parse_list
    from pytorch_scripts_common.outputs import check_output

    skip_patterns = [str(p) for p in parse_list(skip, str, name="skip")] if skip != () else []
    prompt_list = (
        list(DEFAULT_PROMPTS)
        if prompts is None
        else [str(p) for p in parse_list(prompts, str, name="prompts")]
    )
    if max_new_tokens < 1 or eval_tokens < 2:
        raise UsageError(f"--max_new_tokens {max_new_tokens} / --eval_tokens {eval_tokens}: pass >= 1 / >= 2")
    given = {
        "granularity": granularity,
        "group_size": group_size,
        "fp8_emulation_on_cpu": fp8_emulation_on_cpu,
    }
    check_options_apply(recipe, given)
    options = RecipeOptions(**{name: value for name, value in given.items() if value is not None})
    model_source = quantize.resolve_model_source(model)
    output_dir = output_dir or str(
        Path("outputs") / "hf_torchao_vllm" / f"{Path(model_source).name}-{recipe}"
    )
    target = check_output(
        output_dir, inputs=[model_source], overwrite=overwrite, tool=quantize.TOOL, flag="output_dir"
    )
    return Arguments(model_source, options, skip_patterns, prompt_list, target, get_device())


# The original script's flag names (its quant_type values are recipe names or aliases of the registry).
FLAG_ALIASES = {"model_name": "model", "quant_type": "recipe"}
FIXED_FLAGS = {"save_model_to_disk": (True, "this tool always saves the model, to --output_dir")}

if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main, aliases=FLAG_ALIASES, fixed_flags=FIXED_FLAGS)
