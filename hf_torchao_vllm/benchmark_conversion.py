"""Benchmarks: converter throughput vs a plain file copy, and vLLM generate throughput per scheme.

1. Conversion: MB/s of ``convert_checkpoint`` on a torchao checkpoint against ``shutil.copyfile``
   of the same shard files, measured in the same run (median of repeated runs after a warm-up),
   and the converter's peak RSS growth against its largest shard.
2. vLLM (``--vllm``): generate tokens/s on CPU for bf16 and each CPU-runnable compressed-tensors
   scheme (converted from torchao), eager and ``torch.compile``d; each configuration runs in its
   own process (one engine per process), median of repeated ``generate`` calls after warm-up.

    python -m hf_torchao_vllm.benchmark_conversion                 # conversion only (~1 min)
    python -m hf_torchao_vllm.benchmark_conversion --vllm          # + vLLM table (several minutes)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import fire

from hf_torchao_vllm.run_pipeline import EMBEDDED_DENSE_MODEL

VLLM_CHILD = """
import json, os, sys
os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from pytorch_scripts_common import benchmark
path, compile_, batch, tokens = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
llm = LLM(model=path, dtype="bfloat16", max_model_len=256, enforce_eager=not compile_, seed=0,
          skip_tokenizer_init=True)
prompts = [TokensPrompt(prompt_token_ids=[(7 * i + j) % 1000 + 1 for j in range(16)]) for i in range(batch)]
params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, detokenize=False)
result = benchmark(lambda: llm.generate(prompts, params, use_tqdm=False),
                   num_warmup=1, num_runs=3, device="cpu")
print("RESULT " + json.dumps({"median_s": result.median_s, "tokens": batch * tokens}))
"""


def _dir_shards(path: str) -> list[str]:
    return sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))


def benchmark_conversion(dir_source: str, num_runs: int) -> dict:
    from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import convert_checkpoint
    from pytorch_scripts_common import benchmark

    shards = _dir_shards(dir_source)
    total = sum(os.path.getsize(os.path.join(dir_source, s)) for s in shards)
    with tempfile.TemporaryDirectory() as tmp:

        def copy():
            for s in shards:
                shutil.copyfile(os.path.join(dir_source, s), os.path.join(tmp, s))

        summaries = []

        def convert():
            summaries.append(convert_checkpoint(dir_source, os.path.join(tmp, "ct"), overwrite=True))

        copy_time = benchmark(copy, num_warmup=1, num_runs=num_runs, device="cpu")
        convert_time = benchmark(convert, num_warmup=1, num_runs=num_runs, device="cpu")
    last = summaries[-1]
    return {
        "bytes": total,
        "shards": len(shards),
        "copy_mb_s": total / copy_time.median_s / 1e6,
        "convert_mb_s": total / convert_time.median_s / 1e6,
        "peak_rss_delta_mb": last.peak_rss_delta_bytes / 1e6,
        "largest_shard_mb": last.largest_shard_bytes / 1e6,
    }


def benchmark_vllm(path: str, compile: bool, batch: int, tokens: int) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", VLLM_CHILD, path, "1" if compile else "0", str(batch), str(tokens)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"vLLM benchmark of {path} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    return result["tokens"] / result["median_s"]


def main(
    model_path: str = EMBEDDED_DENSE_MODEL,
    dir_source: str | None = None,
    num_runs: int = 5,
    vllm: bool = False,
    recipes: tuple[str, ...] = ("int8_dynamic_act_int8_weight", "int4_weight_only"),
    batch: int = 4,
    max_tokens: int = 32,
) -> None:
    """Print converter throughput (vs file copy) and, with --vllm, vLLM tokens/s per scheme on CPU.

    Args:
        model_path: bf16 model quantized for the benchmarks when dir_source is not given.
        dir_source: an existing torchao checkpoint to time the conversion on (default: model_path
            quantized with int8 weight-only, max shard size 1/8 of the model).
        num_runs: timed conversion and copy repetitions (median reported, after one warm-up); vLLM
            generate is always the median of 3 after a warm-up.
        vllm: also run the vLLM generate benchmark (one process per configuration; minutes).
        recipes: torchao recipes converted to compressed-tensors for the vLLM table.
        batch: prompts per vLLM generate call.
        max_tokens: tokens generated per prompt (EOS ignored).
    """
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    import torch
    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.convert_torchao_checkpoint_to_compressed_tensors import convert_checkpoint
    from hf_torchao_vllm.quantize import quantize_checkpoint

    console = Console(width=120)
    with tempfile.TemporaryDirectory() as tmp:
        if dir_source is None:
            total = sum(os.path.getsize(os.path.join(model_path, s)) for s in _dir_shards(model_path))
            dir_source = os.path.join(tmp, "torchao")
            quantize_checkpoint(model_path, "int8_weight_only", dir_source, max_shard_size=max(total // 8, 1))
        conv = benchmark_conversion(dir_source, num_runs)
        table = Table(
            title=f"conversion on CPU ({torch.get_num_threads()} threads; 1-minute load average "
            f"{os.getloadavg()[0]:.2f} at the end)"
        )
        for col in (
            "input",
            "copy MB/s",
            "convert MB/s",
            "convert / copy",
            "peak RSS growth / largest shard",
        ):
            table.add_column(col)
        table.add_row(
            f"{conv['bytes'] / 1e6:.1f} MB in {conv['shards']} shards",
            f"{conv['copy_mb_s']:.0f}",
            f"{conv['convert_mb_s']:.0f}",
            f"{conv['convert_mb_s'] / conv['copy_mb_s']:.2f}",
            f"{conv['peak_rss_delta_mb']:.1f} MB / {conv['largest_shard_mb']:.1f} MB",
        )
        console.print(table)
        if not vllm:
            return
        paths = {"bf16": model_path}
        for recipe in recipes:
            source = os.path.join(tmp, f"torchao_{recipe}")
            quantize_checkpoint(model_path, recipe, source)
            target = os.path.join(tmp, f"ct_{recipe}")
            convert_checkpoint(source, target)
            paths[recipe] = target
        table = Table(
            title=f"vLLM generate on CPU, batch {batch} x {max_tokens} tokens (tokens/s, median of 3; "
            f"1-minute load average {os.getloadavg()[0]:.2f} before)"
        )
        for col in ("checkpoint", "eager", "compiled", "eager vs bf16", "compiled vs bf16"):
            table.add_column(col)
        rates = {}
        for name, path in paths.items():
            rates[name] = {c: benchmark_vllm(path, c, batch, max_tokens) for c in (False, True)}
        for name, r in rates.items():
            table.add_row(
                name,
                f"{r[False]:.1f}",
                f"{r[True]:.1f}",
                f"{r[False] / rates['bf16'][False]:.2f}",
                f"{r[True] / rates['bf16'][True]:.2f}",
            )
        console.print(table)


if __name__ == "__main__":
    fire.Fire(main)
