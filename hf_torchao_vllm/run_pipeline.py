"""The hf_torchao_vllm demo: torchao quantization -> compressed-tensors -> validation -> vLLM (CPU).

On the embedded dense model (default) it
1. quantizes with a recipe through the same function as ``quantize_hf_model_with_torchao``
   (default int8 dynamic activation + int8 weight, which becomes compressed-tensors W8A8),
2. converts the torchao checkpoint to compressed-tensors, shard by shard,
3. validates: every weight decompressed by compressed-tensors equals torchao's dequantization,
   and transformers loads the converted checkpoint with logits close to the torchao model's,
4. runs the converted checkpoint in vLLM on CPU and compares vLLM's next-token distribution with
   transformers' on the same checkpoint (or says why vLLM cannot serve that scheme here),
and prints a result table. Everything is written under ``output_dir``.

    python -m hf_torchao_vllm.run_pipeline                      # W8A8, outputs/pipeline
    python -m hf_torchao_vllm.run_pipeline --recipe=int4_weight_only --overwrite
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hf_torchao_vllm.conversion import checkpoint_reader
from hf_torchao_vllm.tiny_models import EMBEDDED_DENSE

EMBEDDED_DENSE_MODEL = EMBEDDED_DENSE
# Largest accepted mean KL(transformers || vLLM) of the next-token distribution on the converted
# checkpoint, 3x the largest measured value: W8A8 4.4e-4 nats on an AVX2-only AMD EPYC, 1.3e-4 on an
# AVX-512 CPU, W4A16 (group 128) 2e-5 nats, all on the embedded dense model (vLLM's int8 GEMM,
# chosen by ISA, and W4A16 dequant-GEMM vs transformers' compressed-tensors fake quantization).
VLLM_KL_THRESHOLD = 1.3e-3
TOOL = "hf_torchao_vllm.run_pipeline"


def dir_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.name.endswith(".safetensors"))


def step(console, times: dict, name: str, title: str):
    """Context manager: a rule with ``title``, the step's wall time into ``times[name]``."""
    import contextlib

    @contextlib.contextmanager
    def timed():
        console.rule(title)
        start = time.perf_counter()
        yield
        times[name] = time.perf_counter() - start

    return timed()


def run_vllm_step(ct_dir: Path, max_tokens: int, console):
    """vLLM on the converted checkpoint with its KL vs transformers, or (None, why it cannot run here)."""
    import torch

    from hf_torchao_vllm.serving import vllm_support
    from hf_torchao_vllm.serving.vllm_runner import print_result, run_in_vllm

    config = json.loads((ct_dir / checkpoint_reader.CONFIG_FILE).read_text())
    problem = vllm_support.checkpoint_problem(config, set(), torch.device("cpu"))
    if problem is not None:
        console.print(f"vLLM not run: {problem}", markup=False)
        return None, problem
    result = run_in_vllm(str(ct_dir), max_tokens=max_tokens, compare_with_transformers=True)
    print_result(result)
    if not result.kl <= VLLM_KL_THRESHOLD:
        raise RuntimeError(
            f"vLLM vs transformers KL {result.kl:.3g} exceeds {VLLM_KL_THRESHOLD:g} on the converted "
            "checkpoint: the served model does not compute what transformers computes"
        )
    return result, None


def summary_dict(model, recipe, conversion, groups, report, vllm_result, vllm_problem, work: Path, times):
    return {
        "model": os.path.abspath(model),
        "recipe": recipe,
        "compressed_tensors_schemes": conversion.modules_per_scheme,
        "config_groups": {k: {"targets": v["targets"], "format": v["format"]} for k, v in groups.items()},
        "ignore": conversion.ignore,
        "bytes": {
            "bf16": dir_bytes(model),
            "torchao": dir_bytes(work / "torchao"),
            "compressed_tensors": dir_bytes(work / "compressed_tensors"),
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
        "vllm_not_run": vllm_problem,
        "seconds": times,
    }


def print_table(console, result: dict, target: Path) -> None:
    from rich.table import Table

    table = Table(title=f"hf_torchao_vllm pipeline: {result['recipe']} (CPU)")
    table.add_column("step")
    table.add_column("result")
    mb, b = 1e6, result["bytes"]
    schemes = ", ".join(f"{k}: {v} modules" for k, v in result["compressed_tensors_schemes"].items())
    table.add_row("model", f"{Path(result['model']).name} ({b['bf16'] / mb:.1f} MB bf16)")
    table.add_row(
        "torchao -> compressed-tensors",
        f"{schemes}; {len(result['ignore'])} ignored; "
        f"{b['torchao'] / mb:.1f} MB -> {b['compressed_tensors'] / mb:.1f} MB",
    )
    v = result["validation"]
    table.add_row(
        "weights vs torchao",
        f"{v['bit_exact']}/{v['tensors_compared']} tensors bit-exact after compressed-tensors decompression",
    )
    table.add_row(
        "transformers logits",
        f"KL(torchao || compressed-tensors) {v['transformers_kl_torchao_vs_ct']:.2g}, "
        f"top-1 {v['transformers_top1_agreement']:.3f}",
    )
    if result["vllm"] is not None:
        r = result["vllm"]
        table.add_row(
            "vLLM (CPU) vs transformers",
            f"KL {r['kl_transformers_vs_vllm']:.2g} (limit {VLLM_KL_THRESHOLD:g}), "
            f"top-1 {r['top1_agreement']:.2f}",
        )
        table.add_row("vLLM generation", f"{r['prompts'][0]!s} -> {r['completions'][0]!r}")
    elif result["vllm_not_run"]:
        table.add_row("vLLM (CPU)", f"not run: {result['vllm_not_run']}")
    table.add_row("time (s)", ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()))
    table.add_row("written to", str(target))
    console.print(table)


def main(
    model: str = EMBEDDED_DENSE_MODEL,
    recipe: str = "int8_dynamic_act_int8_weight",
    output_dir: str = "outputs/pipeline",
    overwrite: bool = False,
    max_tokens: int = 16,
    run_vllm: bool = True,
) -> None:
    """Quantize with torchao, convert to compressed-tensors, validate, serve with vLLM; print a table.

    Args:
        model: bf16 Hugging Face checkpoint (default: the embedded tiny trained Llama); also --model_path.
        recipe: recipe or alias of quantize_hf_model_with_torchao (vLLM runs on CPU for W8A8 and int4 W4A16).
        output_dir: where torchao/, compressed_tensors/ and summary.json are written.
        overwrite: replace an earlier output of this tool.
        max_tokens: tokens vLLM generates per prompt.
        run_vllm: run step 4 (vLLM); --norun_vllm stops after validation.
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from rich.console import Console

    from hf_torchao_vllm.conversion.convert import convert_checkpoint
    from hf_torchao_vllm.conversion.validate import run_validation
    from hf_torchao_vllm.quantization import quantize
    from pytorch_scripts_common import set_seed
    from pytorch_scripts_common.outputs import check_output, staged_dir

    if max_tokens < 1:
        raise ValueError(f"--max_tokens is {max_tokens}: pass an integer >= 1")
    console = Console(width=120)
    plan = quantize.plan_quantization(model, recipe)
    target = check_output(
        output_dir, inputs=[plan.model_source], overwrite=overwrite, tool=TOOL, flag="output_dir"
    )
    set_seed(0)
    times: dict[str, float] = {}
    vllm_result, vllm_problem = None, "--norun_vllm"
    with staged_dir(target, tool=TOOL) as work:
        with step(console, times, "quantize", f"1. torchao quantization: {recipe}"):
            quantize.quantize_checkpoint(model, recipe, str(work / "torchao"))
        with step(console, times, "convert", "2. convert to compressed-tensors"):
            conversion = convert_checkpoint(str(work / "torchao"), str(work / "compressed_tensors"))
        groups = json.loads((work / "compressed_tensors" / checkpoint_reader.CONFIG_FILE).read_text())[
            "quantization_config"
        ]
        with step(console, times, "validate", "3. validate (decompression vs torchao; transformers logits)"):
            report = run_validation(str(work / "torchao"), str(work / "compressed_tensors"))
        if run_vllm:
            with step(console, times, "vllm", "4. vLLM on the converted checkpoint"):
                vllm_result, vllm_problem = run_vllm_step(work / "compressed_tensors", max_tokens, console)
        result = summary_dict(
            model,
            recipe,
            conversion,
            groups["config_groups"],
            report,
            vllm_result,
            vllm_problem,
            work,
            times,
        )
        (work / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print_table(console, result, target)


# This tool's former flag name.
FLAG_ALIASES = {"model_path": "model"}

if __name__ == "__main__":
    from pytorch_scripts_common.cli import run

    run(main, aliases=FLAG_ALIASES)
