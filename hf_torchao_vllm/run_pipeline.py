"""The hf_torchao_vllm demo: torchao quantization -> compressed-tensors -> validation -> vLLM (CPU).

On the embedded dense model (default) it
1. quantizes with a torchao recipe that vLLM CPU can run once converted (default int8 dynamic
   activation + int8 weight, which becomes compressed-tensors W8A8; or int4 weight-only -> W4A16),
2. converts the torchao checkpoint to compressed-tensors, shard by shard,
3. validates: every weight decompressed by compressed-tensors equals torchao's dequantization,
   and transformers loads the converted checkpoint with logits close to the torchao model's,
4. runs the converted checkpoint in vLLM on CPU and compares vLLM's next-token distribution with
   transformers' on the same checkpoint,
and prints a result table. Everything is written under ``output_dir``.

    python -m hf_torchao_vllm.run_pipeline                      # W8A8, outputs/pipeline
    python -m hf_torchao_vllm.run_pipeline --recipe=int4_weight_only --overwrite
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import fire

from hf_torchao_vllm import ct_checkpoint as ctc

PIPELINE_RECIPES = ("int8_dynamic_act_int8_weight", "int4_weight_only")
EMBEDDED_DENSE_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded_models", "dense")
# Largest accepted mean KL(transformers || vLLM) of the next-token distribution on the converted
# checkpoint. Measured: 0-3e-4 nats on the tiny models for int8 and int4 schemes; 10x margin for
# thread-count dependent reductions in vLLM's CPU kernels.
VLLM_KL_THRESHOLD = 3e-3


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def main(
    model_path: str = EMBEDDED_DENSE_MODEL,
    recipe: str = "int8_dynamic_act_int8_weight",
    output_dir: str = "outputs/pipeline",
    overwrite: bool = False,
    max_tokens: int = 16,
    run_vllm: bool = True,
) -> None:
    """Quantize with torchao, convert to compressed-tensors, validate, serve with vLLM; print a table.

    Args:
        model_path: bf16 Hugging Face checkpoint (default: the embedded tiny trained Llama).
        recipe: torchao recipe, one of int8_dynamic_act_int8_weight (-> W8A8) or int4_weight_only (-> W4A16).
        output_dir: where torchao/, compressed_tensors/ and summary.json are written.
        overwrite: replace output_dir if it exists.
        max_tokens: tokens vLLM generates per prompt.
        run_vllm: run step 4 (vLLM); --norun_vllm stops after validation.
    """
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if recipe not in PIPELINE_RECIPES:
        raise ValueError(
            f"recipe {recipe!r} is not one the pipeline serves on CPU; choose one of {PIPELINE_RECIPES}"
        )
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise ValueError(
            f"model_path {model_path!r} has no config.json; pass a bf16 Hugging Face checkpoint directory"
        )
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and not overwrite:
        raise ValueError(f"output_dir {output_dir!r} exists; pass --overwrite to replace it")

    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import convert_checkpoint, publish
    from hf_torchao_vllm.ct_quantize import quantize_and_save
    from hf_torchao_vllm.validate_compressed_tensors_checkpoint import run_validation
    from pytorch_scripts_common import set_seed

    console = Console(width=120)
    set_seed(0)
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=os.path.dirname(output_dir))
    try:
        times = {}
        start = time.perf_counter()
        console.rule(f"1. torchao quantization: {recipe}")
        torchao_dir = quantize_and_save(model_path, recipe, os.path.join(work, "torchao"))
        times["quantize"] = time.perf_counter() - start

        console.rule("2. convert to compressed-tensors")
        start = time.perf_counter()
        ct_dir = os.path.join(work, "compressed_tensors")
        summary = convert_checkpoint(torchao_dir, ct_dir)
        times["convert"] = time.perf_counter() - start
        with open(os.path.join(ct_dir, ctc.CONFIG_FILE)) as f:
            groups = json.load(f)["quantization_config"]["config_groups"]

        console.rule("3. validate (compressed-tensors decompression vs torchao; transformers logits)")
        start = time.perf_counter()
        report = run_validation(torchao_dir, ct_dir)
        times["validate"] = time.perf_counter() - start

        vllm_result = None
        if run_vllm:
            from hf_torchao_vllm.run_quantized_model_in_vllm import print_result, run_in_vllm

            console.rule("4. vLLM on the converted checkpoint")
            start = time.perf_counter()
            vllm_result = run_in_vllm(ct_dir, max_tokens=max_tokens, compare_with_transformers=True)
            times["vllm"] = time.perf_counter() - start
            print_result(vllm_result)
            if not vllm_result.kl <= VLLM_KL_THRESHOLD:
                raise RuntimeError(
                    f"vLLM vs transformers KL {vllm_result.kl:.3g} exceeds {VLLM_KL_THRESHOLD:g} on the "
                    "converted checkpoint: the served model does not compute what transformers computes"
                )

        result = {
            "model_path": os.path.abspath(model_path),
            "recipe": recipe,
            "compressed_tensors_schemes": summary.modules_per_scheme,
            "config_groups": {k: {"targets": v["targets"], "format": v["format"]} for k, v in groups.items()},
            "ignore": summary.ignore,
            "bytes": {
                "bf16": dir_bytes(model_path),
                "torchao": dir_bytes(torchao_dir),
                "compressed_tensors": dir_bytes(ct_dir),
            },
            "validation": {
                "tensors_compared": report.num_compared,
                "bit_exact": report.num_exact,
                "transformers_kl_torchao_vs_ct": report.kl,
                "transformers_top1_agreement": report.top1_agreement,
            },
            "vllm": None
            if vllm_result is None
            else {
                "kl_transformers_vs_vllm": vllm_result.kl,
                "top1_agreement": vllm_result.top1_agreement,
                "prompts": vllm_result.prompts,
                "completions": vllm_result.texts or vllm_result.generations,
                "engine_start_s": vllm_result.seconds_engine_start,
            },
            "seconds": times,
        }
        with open(os.path.join(work, "summary.json"), "w") as f:
            json.dump(result, f, indent=2)
        publish(work, output_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    table = Table(title=f"hf_torchao_vllm pipeline: {recipe} (CPU)")
    table.add_column("step")
    table.add_column("result")
    mb = 1e6
    b = result["bytes"]
    table.add_row(
        "model", os.path.basename(os.path.normpath(model_path)) + f" ({b['bf16'] / mb:.1f} MB bf16)"
    )
    table.add_row(
        "torchao -> compressed-tensors",
        ", ".join(f"{k}: {v} modules" for k, v in summary.modules_per_scheme.items())
        + f"; {len(summary.ignore)} ignored; "
        + f"{b['torchao'] / mb:.1f} MB -> {b['compressed_tensors'] / mb:.1f} MB",
    )
    table.add_row(
        "weights vs torchao",
        f"{report.num_exact}/{report.num_compared} tensors bit-exact after compressed-tensors decompression",
    )
    table.add_row(
        "transformers logits",
        f"KL(torchao || compressed-tensors) {report.kl:.2g}, top-1 {report.top1_agreement:.3f}",
    )
    if vllm_result is not None:
        table.add_row(
            "vLLM (CPU) vs transformers",
            f"KL {vllm_result.kl:.2g} (limit {VLLM_KL_THRESHOLD:g}), top-1 {vllm_result.top1_agreement:.2f}",
        )
        first = vllm_result.texts[0] if vllm_result.texts else str(vllm_result.generations[0])
        table.add_row("vLLM generation", f"{vllm_result.prompts[0]!s} -> {first!r}")
    table.add_row("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    table.add_row("written to", output_dir)
    console.print(table)


if __name__ == "__main__":
    fire.Fire(main)
