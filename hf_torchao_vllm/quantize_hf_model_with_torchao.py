"""Quantize a Hugging Face causal LM with a torchao recipe, check it, save it, reload it, report quality.

Steps: resolve the recipe to a torchao config for this device -> select weights generically
(``--modules`` + ``--skip``; routers and ``lm_head`` stay bf16 unless asked) -> load the model through
transformers with ``TorchAoConfig(FqnToConfig({regex: config}))`` (quantize-on-load, the same path
``save_pretrained`` / ``from_pretrained`` understand) -> verify that exactly the selected weights
became torchao tensors (no silent no-op) -> per-module summary -> greedy generations next to bf16 ->
quality report on held-out text (logits SQNR, perplexity, KL, size) -> save (safetensors) into a
temp dir -> reload -> require bit-identical logits -> rename into ``output_dir``.

    python hf_torchao_vllm/quantize_hf_model_with_torchao.py --recipe=int8_weight_only
    python hf_torchao_vllm/quantize_hf_model_with_torchao.py \\
        --model=hf_torchao_vllm/embedded_models/moe --recipe=fp8_weight_only --modules=experts_only
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import fire
import torch

from hf_torchao_vllm.train_tiny_models import DEFAULT_OUTPUT_DIR as EMBEDDED_MODELS_DIR

DEFAULT_MODEL = str(EMBEDDED_MODELS_DIR / "dense")
DEFAULT_PROMPTS = ("The try statement", "A function definition defines", "Comparisons")
REPORT_FILE = "quantization_report.json"


def resolve_model_source(model: str) -> str:
    """``model`` if it is an existing local directory or plausibly a Hub id; else a ``ValueError``."""
    path = Path(model)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"model directory {model!r} has no config.json; pass an HF model directory or id"
            )
        return str(path)
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep + os.sep in model
    if looks_local or not model:
        raise ValueError(
            f"model path {model!r} does not exist; pass an existing HF model directory or a Hub id"
        )
    return model  # a Hub id: from_pretrained reports whether it can be fetched


def load_causal_lm_config(model: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load a transformers config from {model!r}: {error}") from error
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(
            f"{model!r} is not a causal LM (model_type={config.model_type!r}, "
            f"architectures={getattr(config, 'architectures', None)}); "
            "this tool quantizes *ForCausalLM models"
        )
    return config


def meta_model(config) -> torch.nn.Module:
    """The model's module tree on the meta device: names, types and shapes without memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)


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
                name = module_name if is_linear_weight else f"{module_name}.{param_name}"
                found[name] = param
    return found


def print_summary(model, selection, recipe_name: str) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.recipes import describe_weight

    params = dict(model.named_parameters())
    rows = []
    for target in selection.selected:
        info = describe_weight(params[target.param_name])
        rows.append({"name": target.name, "shape": list(target.shape), "status": "quantized", **info})
    for name, reason in selection.skipped.items():
        param_name = name if name in params else f"{name}.weight"
        info = describe_weight(params[param_name]) if param_name in params else {}
        rows.append({"name": name, "status": f"skipped: {reason}", **info})
    table = Table(
        title=f"recipe {recipe_name}: {len(selection.selected)} quantized, {len(selection.skipped)} skipped"
    )
    for column in ("weight", "shape", "tensor type", "qdata dtype", "granularity", "status"):
        table.add_column(column)
    for row in rows:
        shape = row.get("shape") or list(params.get(row["name"], params.get(f"{row['name']}.weight")).shape)
        table.add_row(
            row["name"],
            "x".join(map(str, shape)),
            row.get("tensor_type", "-"),
            row.get("qdtype", "-"),
            row.get("granularity", "-"),
            row["status"],
        )
    Console(width=200).print(table)
    return rows


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    device = next(model.parameters()).device
    outputs = []
    for prompt in prompts:
        input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(
            input_ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(generated[0, input_ids.shape[1] :], skip_special_tokens=True))
    return outputs


@torch.no_grad()
def check_logits(model, token_ids: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=token_ids[None].to(device)).logits.float().cpu()


def experts_load_kwargs(recipe: str, selection) -> dict:
    """transformers' grouped-mm experts kernel transposes the 3D expert weight, which torchao tensors
    do not implement; the eager per-expert loop calls F.linear on expert slices, which they do."""
    has_3d = recipe != "none" and any(t.is_3d for t in selection.selected)
    return {"experts_implementation": "eager"} if has_3d else {}


def load_quantized_model(model_source: str, recipe: str, options, selection, device: torch.device):
    """Load ``model_source`` in bf16 with ``recipe`` applied to the selected weights (quantize-on-load
    through ``TorchAoConfig(FqnToConfig)``), on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from hf_torchao_vllm.recipes import (
        build_fqn_to_config,
        make_torchao_config,
        maybe_bypass_fp8_hardware_check,
    )

    load_kwargs = experts_load_kwargs(recipe, selection)
    if recipe == "none":
        model = AutoModelForCausalLM.from_pretrained(model_source, dtype=torch.bfloat16, **load_kwargs)
        return model.to(device).eval()
    torchao_config = make_torchao_config(recipe, options, device)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(load_causal_lm_config(model_source), dtype=torch.bfloat16)
    all_names = [n for n, _ in skeleton.named_modules()] + [n for n, _ in skeleton.named_parameters()]
    fqn_config = build_fqn_to_config(selection.selected, all_names, torchao_config)
    # modules_to_not_convert lists what stays high precision (routers, lm_head, unselected), so that
    # consumers of the checkpoint (vLLM) do not quantize them either.
    quantization_config = TorchAoConfig(fqn_config, modules_to_not_convert=sorted(selection.skipped))
    with maybe_bypass_fp8_hardware_check(recipe == "fp8" and device.type != "cuda"):
        model = AutoModelForCausalLM.from_pretrained(
            model_source, dtype=torch.bfloat16, quantization_config=quantization_config, **load_kwargs
        )
    return model.to(device).eval()


def main(
    model: str = DEFAULT_MODEL,
    recipe: str = "int8_weight_only",
    granularity: str = "per_row",
    group_size: int = 128,
    modules: str = "all",
    skip: list[str] | str = (),
    quantize_lm_head: bool = False,
    quantize_routers: bool = False,
    fp8_emulation_on_cpu: bool = False,
    output_dir: str | None = None,
    overwrite: bool = False,
    prompts: list[str] | None = None,
    max_new_tokens: int = 16,
    eval_tokens: int = 1024,
    seed: int = 0,
) -> str:
    """Quantize an HF causal LM with torchao, summarize, generate, evaluate, save, reload and verify.

    Args:
        model: HF model id or local directory (default: the embedded tiny dense Llama).
        recipe: quantization recipe (int8_weight_only, int4_weight_only, fp8, mxfp8, ...; see README).
        granularity: fp8 scaling granularity: per_row | per_tensor | a1x128_w128x128.
        group_size: int4_weight_only group size (must divide every selected in_features).
        modules: which weights to quantize: all | experts_only | mlp_only | skip_attention.
        skip: regex(es) on weight names to keep in bf16 (re.search), e.g. --skip='layers\\.0\\.'.
        quantize_lm_head: also quantize the output embedding (lm_head).
        quantize_routers: also quantize MoE routers / gates.
        fp8_emulation_on_cpu: allow recipe fp8 on CPU by bypassing torchao's hardware check (emulation, slow).
        output_dir: where to save (default outputs/hf_torchao_vllm/<model>-<recipe>).
        overwrite: replace an existing output_dir.
        prompts: prompts for the greedy generation check (default: three fixed prompts).
        max_new_tokens: tokens generated per prompt.
        eval_tokens: held-out tokens for the quality report.
        seed: seed for everything random.
    """
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_torchao_vllm import evaluate_quality
    from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import publish
    from hf_torchao_vllm.recipes import (
        MODULE_SELECTORS,
        RecipeOptions,
        check_3d_support,
        check_divisibility,
        select_targets,
        validate_recipe_options,
    )
    from pytorch_scripts_common import get_device, set_seed

    console = Console(width=200)
    # ---- validate everything cheap before loading weights
    device = get_device()
    options = RecipeOptions(
        granularity=granularity, group_size=group_size, fp8_emulation_on_cpu=fp8_emulation_on_cpu
    )
    recipe_entry = validate_recipe_options(recipe, options, device)
    if modules not in MODULE_SELECTORS:
        raise ValueError(f"unknown module selector {modules!r}; valid: {', '.join(MODULE_SELECTORS)}")
    skip_patterns = [skip] if isinstance(skip, str) else list(skip)
    prompts = (
        list(DEFAULT_PROMPTS)
        if prompts is None
        else ([prompts] if isinstance(prompts, str) else list(prompts))
    )
    if max_new_tokens < 1 or eval_tokens < 2:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) must be >= 1 and eval_tokens ({eval_tokens}) >= 2"
        )
    model_source = resolve_model_source(model)
    if output_dir is None:
        output_dir = str(Path("outputs") / "hf_torchao_vllm" / f"{Path(model_source).name}-{recipe}")
    output_path = Path(output_dir)
    if output_path.exists() and not overwrite:
        raise ValueError(f"output_dir {output_path} exists; pass --overwrite=True to replace it")
    config = load_causal_lm_config(model_source)
    set_seed(seed)

    # ---- select weights on the meta-device module tree
    selection = select_targets(meta_model(config), modules, skip_patterns, quantize_lm_head, quantize_routers)
    if recipe != "none":
        if not selection.selected:
            raise ValueError(
                f"--modules={modules} with --skip={skip_patterns} selects no weight of {model_source}; "
                "choose another selector or fewer skip patterns"
            )
        check_3d_support(recipe_entry, selection.selected)
        check_divisibility(recipe_entry, options, selection.selected)
    load_kwargs = experts_load_kwargs(recipe, selection)
    if load_kwargs:
        console.print("3D expert weights selected: loading with experts_implementation='eager'")

    # ---- reference and quantized models
    tokenizer = AutoTokenizer.from_pretrained(model_source)
    reference_model = AutoModelForCausalLM.from_pretrained(model_source, dtype=torch.bfloat16, **load_kwargs)
    reference_model.to(device).eval()
    quantized_model = load_quantized_model(model_source, recipe, options, selection, device)
    got = set(quantized_weight_names(quantized_model))
    want = {t.name for t in selection.selected} if recipe != "none" else set()
    if got != want:
        raise RuntimeError(
            f"recipe {recipe!r} did not quantize exactly the selected weights: missing "
            f"{sorted(want - got)[:8]}, unexpected {sorted(got - want)[:8]} "
            "(torchao skips some shapes silently)"
        )
    summary_rows = print_summary(quantized_model, selection, recipe) if recipe != "none" else []

    # ---- generation
    reference_texts = greedy_generate(reference_model, tokenizer, prompts, max_new_tokens)
    quantized_texts = greedy_generate(quantized_model, tokenizer, prompts, max_new_tokens)
    for prompt, ref_text, q_text in zip(prompts, reference_texts, quantized_texts, strict=True):
        console.print(f"[bold]prompt[/bold] {prompt!r}\n  bf16     : {ref_text!r}\n  {recipe:9s}: {q_text!r}")

    # ---- quality on held-out text
    report = evaluate_quality.evaluate(reference_model, quantized_model, tokenizer, max_tokens=eval_tokens)

    # ---- save into a temp dir next to the target, reload, require identical logits, then rename
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_path.name}.tmp", dir=output_path.parent))
    try:
        try:
            quantized_model.save_pretrained(tmp_dir)
        except Exception as error:  # noqa: BLE001 -- re-raised with the recipe named
            raise ValueError(
                f"recipe {recipe!r}: torchao/transformers cannot serialize this model: {error}"
            ) from error
        tokenizer.save_pretrained(tmp_dir)
        weight_files = sorted(
            f.name for f in tmp_dir.iterdir() if f.name.endswith(evaluate_quality.WEIGHT_FILE_SUFFIXES)
        )
        console.print(f"saved weights as {weight_files}")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_dir, dtype=torch.bfloat16, **load_kwargs)
        reloaded.to(device).eval()
        probe = evaluate_quality.held_out_token_ids(tokenizer, 128)
        logits_in_memory = check_logits(quantized_model, probe)
        logits_reloaded = check_logits(reloaded, probe)
        if not torch.equal(logits_in_memory, logits_reloaded):
            max_diff = (logits_in_memory - logits_reloaded).abs().max().item()
            raise RuntimeError(
                f"reloaded model's logits differ from the in-memory quantized model (max |diff| {max_diff})"
            )
        console.print("reload check: logits of the reloaded model are bit-identical to the in-memory model")
        report = evaluate_quality.QualityReport(
            **{
                **{k: v for k, v in report.as_dict().items() if k != "size_ratio"},
                "bytes_reference": evaluate_quality.weight_bytes_on_disk(model_source),
                "bytes_quantized": evaluate_quality.weight_bytes_on_disk(tmp_dir),
            }
        )
        evaluate_quality.print_report(
            report, f"quality: {recipe} vs bf16 ({device}, torch {torch.__version__})"
        )
        payload = {
            "model": model_source,
            "recipe": recipe,
            "options": {
                "granularity": granularity,
                "group_size": group_size,
                "modules": modules,
                "skip": skip_patterns,
            },
            "device": str(device),
            "quality": report.as_dict(),
            "weights": summary_rows,
            "generations": [
                {"prompt": p, "bf16": r, "quantized": q}
                for p, r, q in zip(prompts, reference_texts, quantized_texts, strict=True)
            ],
            "reload_logits_identical": True,
            "weight_files": weight_files,
        }
        (tmp_dir / REPORT_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        publish(str(tmp_dir), str(output_path))
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    console.print(
        f"wrote {output_path} (weights, config.json with the torchao quantization_config, "
        f"tokenizer, {REPORT_FILE})"
    )
    return str(output_path)


if __name__ == "__main__":
    fire.Fire(main)
