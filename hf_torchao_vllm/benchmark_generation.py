"""Generation speed of torchao recipes vs bf16: prefill and decode tokens/s, eager and torch.compile'd.

For each recipe the model is loaded through the same quantize-on-load path as
``quantize_hf_model_with_torchao.py``. HF ``generate`` runs greedy, batch 1, with a static KV cache
(so the compiled forward has fixed shapes). Per configuration:

- prefill time = median time of ``generate(max_new_tokens=1)`` (the prompt forward + one token);
- decode time per token = (median time of ``generate(max_new_tokens=N)`` - prefill time) / (N - 1);
- achieved GB/s = weight bytes read per decoded token (every parameter once) x decode tokens/s.

Ratios are against bf16 in the same mode, measured in the same run. ``--hidden_size`` > 0 benchmarks
a random-weight Llama of that width instead (speed does not depend on the weights' values).

    python -m hf_torchao_vllm.benchmark_generation --recipes=none,int8_weight_only --modes=eager
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.quantize_hf_model_with_torchao import DEFAULT_MODEL

MODES = ("eager", "compiled")


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer as stored (torchao tensors: their inner tensors)."""
    from torchao.utils import TorchAOBaseTensor

    def tensor_bytes(t: torch.Tensor) -> int:
        if isinstance(t, TorchAOBaseTensor):
            return sum(tensor_bytes(getattr(t, name)) for name in t.tensor_data_names)
        return t.numel() * t.element_size()

    return sum(tensor_bytes(p.data if hasattr(p, "data") else p) for p in model.parameters())


def time_generation(model, prompt_ids, new_tokens: int, mode: str, num_warmup: int, num_runs: int):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import CompileConfig

    from pytorch_scripts_common import benchmark

    def run(max_new_tokens: int) -> float:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            cache_implementation="static",
            disable_compile=mode == "eager",
            compile_config=CompileConfig(fullgraph=False, dynamic=False) if mode == "compiled" else None,
            pad_token_id=0,
        )
        if mode == "compiled":
            config.compile_config._compile_all_devices = True  # transformers compiles on CUDA only by default

        def call():
            with torch.no_grad():
                model.generate(prompt_ids, generation_config=config)

        return benchmark(call, num_warmup=num_warmup, num_runs=num_runs).median_s

    from pytorch_scripts_common.cli import UsageError

    prefill_s = run(1)
    total_s = run(new_tokens)
    if total_s <= prefill_s:
        raise UsageError(
            f"generating {new_tokens} tokens took no longer than generating 1 ({total_s:.3g} s vs "
            f"{prefill_s:.3g} s, medians of {num_runs}): the decode time is below the timing noise; "
            "pass a larger --new_tokens or --num_runs"
        )
    return prefill_s, (total_s - prefill_s) / (new_tokens - 1)


def main(
    model: str = DEFAULT_MODEL,
    recipes: str = "none,int8_weight_only,int8_dynamic_act_int8_weight,int4_weight_only,fp8_weight_only",
    modes: str = "eager",
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    num_warmup: int = 1,
    num_runs: int = 3,
    hidden_size: int = 0,
    num_layers: int = 12,
    fp8_emulation_on_cpu: bool = False,
) -> None:
    """Print a table of prefill / decode tokens/s and GB/s for bf16 and each recipe, eager and compiled.

    Args:
        model: HF model id or directory (default: the embedded dense model).
        recipes: comma-separated recipes; 'none' (bf16) is always measured first as the baseline.
        modes: comma-separated subset of eager,compiled.
        prompt_tokens: prompt length (tokens).
        new_tokens: generated tokens per decode measurement (>= 2).
        num_warmup: untimed generate calls before timing (compiled: also absorbs compile time).
        num_runs: timed generate calls; the median is reported.
        hidden_size: if > 0, benchmark a random-weight Llama with this width instead of model.
        num_layers: layers of the random Llama (with hidden_size > 0).
        fp8_emulation_on_cpu: allow recipe fp8 on CPU (emulated; see the quantize script).
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    from hf_torchao_vllm.quantization import quantize
    from hf_torchao_vllm.quantization.recipes import RecipeOptions
    from pytorch_scripts_common import get_device, set_seed

    device = get_device()
    options = RecipeOptions(fp8_emulation_on_cpu=fp8_emulation_on_cpu)
    recipe_list, mode_list = check_arguments(
        recipes, modes, prompt_tokens, new_tokens, num_runs, hidden_size, options, device
    )
    set_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_model_") as tmp:
        if hidden_size > 0:
            model_source = tiny_models.save_random_llama(
                str(Path(tmp) / "m"), hidden_size, 4 * hidden_size, num_layers, vocab_size=32000,
                num_key_value_heads=hidden_size // 64, max_position_embeddings=2048,
            )  # fmt: skip
            model_label = f"random Llama h={hidden_size} L={num_layers}"
        else:
            model_source = quantize.resolve_model_source(model)
            model_label = Path(model_source).name
        plans = {r: quantize.plan_quantization(model_source, r, options, device=device) for r in recipe_list}
        rows = measure_recipes(plans, mode_list, prompt_tokens, new_tokens, num_warmup, num_runs, device)
    print_table(rows, model_label, prompt_tokens, new_tokens, num_runs, device)


def check_arguments(
    recipes, modes, prompt_tokens: int, new_tokens: int, num_runs: int, hidden_size: int, options, device
) -> tuple[list[str], list[str]]:
    """The recipes (bf16 ``none`` first) and modes to measure; every mistake before any model loads."""
    from hf_torchao_vllm.quantization.recipes import validate_recipe_options
    from pytorch_scripts_common.cli import UsageError, parse_list

    recipe_list = ["none"] + [r for r in parse_list(recipes, str, name="recipes") if r != "none"]
    mode_list = parse_list(modes, str, name="modes")
    for mode in mode_list:
        if mode not in MODES:
            raise UsageError(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    if new_tokens < 2 or prompt_tokens < 1 or num_runs < 1:
        raise UsageError("need new_tokens >= 2, prompt_tokens >= 1, num_runs >= 1: pass larger values")
    if hidden_size > 0 and hidden_size % 128:
        raise UsageError(f"hidden_size={hidden_size} must be a multiple of 128: pass e.g. 768")
    for recipe in recipe_list:
        validate_recipe_options(recipe, options, device)
    return recipe_list, mode_list


def measure_recipes(
    plans: dict, modes: list[str], prompt_tokens: int, new_tokens: int, num_warmup: int, num_runs: int, device
) -> list[dict]:
    """One row per (recipe, mode): prefill / decode tokens per second, weight bytes, decode GB/s."""
    from hf_torchao_vllm.quantization import quantize

    vocab_size = plans["none"].config.get_text_config().vocab_size
    prompt_ids = torch.randint(0, vocab_size, (1, prompt_tokens), device=device)
    rows = []
    for recipe, plan in plans.items():
        quantized = quantize.load_quantized_model(plan)
        num_bytes = model_bytes(quantized)
        for mode in modes:
            torch._dynamo.reset()
            prefill_s, decode_s = time_generation(
                quantized, prompt_ids, new_tokens, mode, num_warmup, num_runs
            )
            rows.append(
                {
                    "recipe": recipe,
                    "mode": mode,
                    "prefill_tokens_per_s": prompt_tokens / prefill_s,
                    "decode_tokens_per_s": 1.0 / decode_s,
                    "model_bytes": num_bytes,
                    "decode_gb_per_s": num_bytes / decode_s / 1e9,
                }
            )
        del quantized
    return rows


def print_table(
    rows: list[dict], model_label: str, prompt_tokens: int, new_tokens: int, num_runs: int, device
) -> None:
    """The rows with their decode speed against bf16 in the same mode (ratio stored in each row)."""
    from rich.console import Console
    from rich.table import Table

    baseline = {r["mode"]: r for r in rows if r["recipe"] == "none"}
    table = Table(
        title=f"{model_label}: "
        f"batch 1, prompt {prompt_tokens}, {new_tokens} new tokens, {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {num_runs}"
    )
    for column in ("recipe", "mode", "prefill tok/s", "decode tok/s", "decode vs bf16", "weights MB", "GB/s"):
        table.add_column(column, justify="left" if column in ("recipe", "mode") else "right")
    for row in rows:
        ratio = row["decode_tokens_per_s"] / baseline[row["mode"]]["decode_tokens_per_s"]
        row["decode_ratio_vs_bf16"] = ratio
        table.add_row(
            row["recipe"],
            row["mode"],
            f"{row['prefill_tokens_per_s']:.0f}",
            f"{row['decode_tokens_per_s']:.1f}",
            f"{ratio:.2f}x",
            f"{row['model_bytes'] / 1e6:.1f}",
            f"{row['decode_gb_per_s']:.2f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main)
