"""Quantize a Hugging Face causal LM with a torchao recipe, check it, save it, reload it, report quality.

Steps (each a function of ``hf_torchao_vllm.quantize``, the one quantize path every tool uses):
plan (recipe -> torchao config for this device, generic weight selection, shapes, whether vLLM can
serve the result) -> quantize on load -> verify exactly the selected weights became torchao tensors
-> per-weight summary -> greedy generations next to bf16 -> quality on held-out text -> save into a
staging folder -> reload with bit-identical logits -> publish ``output_dir``.

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

from hf_torchao_vllm import quantize
from hf_torchao_vllm.quantize import REPORT_FILE
from hf_torchao_vllm.train_tiny_models import DEFAULT_OUTPUT_DIR as EMBEDDED_MODELS_DIR

DEFAULT_MODEL = str(EMBEDDED_MODELS_DIR / "dense")
DEFAULT_PROMPTS = ("The try statement", "A function definition defines", "Comparisons")
__all__ = ["DEFAULT_MODEL", "REPORT_FILE", "main"]


def print_summary(model, plan: quantize.Plan) -> list[dict]:
    """Table of every candidate weight: quantized (stored type, dtype, granularity) or why skipped."""
    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.recipes import describe_weight

    params = dict(model.named_parameters())
    rows = []
    for target in plan.selection.selected:
        info = describe_weight(params[target.param_name])
        recipe = plan.recipe_by_target.get(target.name, plan.recipe.name)
        rows.append(
            {
                "name": target.name,
                "shape": list(target.shape),
                "status": "quantized",
                "recipe": recipe,
                **info,
            }
        )
    for name, reason in plan.selection.skipped.items():
        target = plan.selection.targets[name]
        info = describe_weight(params[target.param_name]) if target.param_name in params else {}
        rows.append({"name": name, "shape": list(target.shape), "status": f"skipped: {reason}", **info})
    counts = f"{len(plan.selection.selected)} quantized, {len(plan.selection.skipped)} skipped"
    table = Table(title=f"recipe {plan.recipe.name}: {counts}")
    for column in ("weight", "shape", "tensor type", "qdata dtype", "granularity", "status"):
        table.add_column(column)
    for row in rows:
        cells = (row.get("tensor_type", "-"), row.get("qdtype", "-"), row.get("granularity", "-"))
        table.add_row(row["name"], "x".join(map(str, row["shape"])), *cells, row["status"])
    Console(width=200).print(table)
    return rows


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(
            input_ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
        outputs.append(tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True))
    return outputs


def compare_generations(
    console, reference_model, quantized_model, tokenizer, prompts, max_new_tokens, recipe
):
    reference_texts = greedy_generate(reference_model, tokenizer, prompts, max_new_tokens)
    quantized_texts = greedy_generate(quantized_model, tokenizer, prompts, max_new_tokens)
    for prompt, ref_text, q_text in zip(prompts, reference_texts, quantized_texts, strict=True):
        console.print(f"[bold]prompt[/bold] {prompt!r}\n  bf16     : {ref_text!r}\n  {recipe:9s}: {q_text!r}")
    return [
        {"prompt": p, "bf16": r, "quantized": q}
        for p, r, q in zip(prompts, reference_texts, quantized_texts, strict=True)
    ]


def save_and_reload(console, quantized_model, plan, tokenizer, staging: Path) -> list[str]:
    """Save into ``staging``, reload, require bit-identical logits on held-out tokens."""
    from hf_torchao_vllm import evaluate_quality

    weight_files = quantize.save_checkpoint(quantized_model, plan, staging)
    tokenizer.save_pretrained(staging)
    console.print(f"saved weights as {weight_files}")
    quantize.reload_and_compare(
        quantized_model, plan, staging, evaluate_quality.held_out_token_ids(tokenizer, 128)
    )
    console.print("reload check: logits of the reloaded model are bit-identical to the in-memory model")
    return weight_files


def report_payload(plan, args: dict, quality, rows, generations, weight_files) -> dict:
    return {
        "model": plan.model_source,
        "recipe": plan.recipe.name,
        "options": args,
        "torchao_layout": {name: v.label for name, v in plan.variants.items()},
        "device": str(plan.device),
        "vllm_servable": plan.vllm_problem is None,
        "vllm_problem": plan.vllm_problem,
        "quality": quality.as_dict(),
        "weights": rows,
        "generations": generations,
        "reload_logits_identical": True,
        "weight_files": weight_files,
    }


def main(
    model: str = DEFAULT_MODEL,
    recipe: str = "int8_weight_only",
    granularity: str = "per_row",
    group_size: int = 128,
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
        model: HF model id or local directory (default: the embedded tiny dense Llama).
        recipe: recipe or alias (int8_weight_only, int4_weight_only, fp8, mxfp8, ...; see README).
        granularity: fp8 scaling granularity: per_row | per_tensor | a1x128_w128x128.
        group_size: int4 group size (must divide every selected in_features).
        modules: which weights to quantize: all | experts_only | mlp_only | skip_attention.
        skip: regex(es) on weight names to keep in bf16 (re.search), e.g. --skip='layers\\.0\\.'.
        quantize_lm_head: also quantize the output embedding (lm_head).
        quantize_routers: also quantize MoE routers / gates / shared-expert gates.
        fp8_emulation_on_cpu: allow recipe fp8 on CPU by bypassing torchao's hardware check (emulation, slow).
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

    from hf_torchao_vllm import evaluate_quality
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
    tokenizer, reference_model, quantized_model = load_models(plan)
    rows = print_summary(quantized_model, plan) if plan.quantizes else []
    generations = compare_generations(
        console, reference_model, quantized_model, tokenizer, args.prompts, max_new_tokens, plan.recipe.name
    )
    quality = evaluate_quality.evaluate(reference_model, quantized_model, tokenizer, max_tokens=eval_tokens)
    with staged_dir(args.target, tool=quantize.TOOL) as staging:
        weight_files = save_and_reload(console, quantized_model, plan, tokenizer, staging)
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
    from hf_torchao_vllm.recipes import RecipeOptions
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
    options = RecipeOptions(
        granularity=granularity, group_size=group_size, fp8_emulation_on_cpu=fp8_emulation_on_cpu
    )
    model_source = quantize.resolve_model_source(model)
    output_dir = output_dir or str(
        Path("outputs") / "hf_torchao_vllm" / f"{Path(model_source).name}-{recipe}"
    )
    target = check_output(
        output_dir, inputs=[model_source], overwrite=overwrite, tool=quantize.TOOL, flag="output_dir"
    )
    return Arguments(model_source, options, skip_patterns, prompt_list, target, get_device())


def load_models(plan: quantize.Plan):
    """The tokenizer, the bf16 reference and the quantized model (verified: exactly the selected weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model_source)
    reference_model = AutoModelForCausalLM.from_pretrained(
        plan.model_source, dtype=torch.bfloat16, **plan.load_kwargs
    )
    quantized_model = quantize.load_quantized_model(plan)
    quantize.verify_quantized(quantized_model, plan)
    return tokenizer, reference_model.to(plan.device).eval(), quantized_model


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
