"""Benchmarks: converter throughput vs a plain file copy, and vLLM generate throughput per scheme.

1. Conversion: for each recipe, a Llama-shaped torchao checkpoint of ``--size_mb`` is generated
   (random bf16 weights quantized by torchao's own ``quantize_`` and tensor subclasses, saved the
   way transformers saves them: flattened subclasses, torchao metadata in every shard, an index),
   then ``convert_checkpoint`` and a plain copy of the same files (``shutil.copyfile``, i.e.
   ``sendfile``, what ``cp`` does) run alternately ``--num_runs`` times after a warm-up of each,
   each into a new folder deleted after it was timed.
   The table gives the median wall time with its min-max spread, MB/s of input, the converter's
   speed as a fraction of the copy's, CPU time (user + system) of each, and the converter's peak RSS
   (growth during the shard loop against the largest shard, and the whole process's), with the load
   average before and after. The checkpoints are
   deleted at the end.
2. vLLM (``--vllm``): generate tokens/s on CPU for bf16 and each CPU-runnable compressed-tensors
   scheme (converted from torchao), eager and ``torch.compile``d; each configuration runs in its
   own process (one engine per process), median of repeated ``generate`` calls after warm-up.

    python -m hf_torchao_vllm.benchmark_conversion                 # 1.1 GB int8 and fp8 (~70 s)
    python -m hf_torchao_vllm.benchmark_conversion --vllm          # + vLLM table (several minutes)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hf_torchao_vllm.tiny_models import EMBEDDED_DENSE
from pytorch_scripts_common.cli import UsageError, parse_list, run

VLLM_CHILD = """
import json, os, sys
from pytorch_scripts_common.torchao_env import configure_torchao_env

configure_torchao_env()
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

# Recipes the conversion benchmark can generate: int8 weight-only is repacked (each byte offset
# into int32 words), fp8 passes through (weights and scales are copied as they are).
CONVERSION_RECIPES = ("int8_weight_only", "int8_dynamic_act_int8_weight", "fp8_per_row", "fp8_weight_only")


@dataclasses.dataclass(frozen=True)
class LlamaShape:
    """Dimensions of the generated model: Llama-style attention (GQA) and gated MLP."""

    hidden: int
    intermediate: int
    vocab: int
    num_layers: int

    @property
    def kv_dim(self) -> int:
        return max(64, self.hidden // 4)

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, out_features, in_features) of every Linear weight of one layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        return [
            ("self_attn.q_proj", h, h),
            ("self_attn.k_proj", kv, h),
            ("self_attn.v_proj", kv, h),
            ("self_attn.o_proj", h, h),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ]

    @staticmethod
    def for_size(size_mb: float) -> LlamaShape:
        """The shape whose int8 / fp8 checkpoint is at least ``size_mb`` (weights ~1 byte each,
        bf16 embedding and lm_head ~20-25% of the total)."""
        hidden, intermediate, vocab = (2048, 5632, 32000) if size_mb >= 600 else (256, 768, 4096)
        shape = LlamaShape(hidden, intermediate, vocab, 1)
        per_layer = sum(o * i for _, o, i in shape.linears())
        embeddings = 2 * vocab * hidden * 2
        num_layers = max(1, math.ceil((size_mb * 1e6 - embeddings) / per_layer))
        return dataclasses.replace(shape, num_layers=num_layers)


def write_synthetic_checkpoint(path: str, recipe: str, size_mb: float, shard_mb: float, seed: int = 0) -> str:
    """Write a torchao checkpoint of about ``size_mb`` MB at ``path``, in shards of at most
    ``shard_mb`` MB, parameter by parameter (the model is never built, so memory stays at a shard)."""
    import torch
    from transformers import LlamaConfig, TorchAoConfig

    from hf_torchao_vllm.conversion import checkpoint_reader
    from hf_torchao_vllm.quantization import recipes

    shape = LlamaShape.for_size(size_mb)
    entry, options = recipes.resolve(recipe, recipes.RecipeOptions(fp8_emulation_on_cpu=True))
    config = recipes.choose_variant(entry, options, torch.device("cpu")).config
    assert config is not None, f"{recipe} does not quantize on CPU"  # CONVERSION_RECIPES all do
    generator = torch.Generator().manual_seed(seed)

    def quantized_weight(out_features: int, in_features: int):
        return _quantized_linear_weight(out_features, in_features, config, entry.name == "fp8", generator)

    params, metadata = _parameters_and_metadata(shape, quantized_weight)
    os.makedirs(path)
    weight_map, total = _write_shards(
        path, _split_into_shards(params, shard_mb), metadata, shape, quantized_weight, generator
    )
    with open(os.path.join(path, checkpoint_reader.INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.hidden // 64,
        num_key_value_heads=shape.kv_dim // 64,
        head_dim=64,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    hf_config.quantization_config = TorchAoConfig(config)
    hf_config.to_json_file(os.path.join(path, checkpoint_reader.CONFIG_FILE))
    return path


# (parameter name, [out, in] of a quantized Linear weight or None for a plain tensor, stored bytes)
Param = tuple[str, "tuple[int, int] | None", int]


def _quantized_linear_weight(out_features: int, in_features: int, config, is_fp8: bool, generator):
    """A bf16 Linear weight of N(0, 1/in) values, quantized by torchao's ``quantize_`` with ``config``."""
    import torch
    from torchao.quantization import quantize_

    from hf_torchao_vllm.quantization import recipes

    linear = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0, in_features**-0.5, generator=generator)
    with recipes.maybe_bypass_fp8_hardware_check(is_fp8):  # only quantizes weights
        quantize_(linear, config)
    return linear.weight


def _parameters_and_metadata(shape: LlamaShape, quantized_weight) -> tuple[list[Param], dict[str, str]]:
    """Every parameter in model order with its stored size, and the torchao metadata of all of them
    (transformers writes the metadata of the whole model into every shard)."""
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    templates: dict[tuple[int, int], tuple[str, int]] = {}  # [out, in] -> (metadata entry, bytes)
    for out_features, in_features in {(o, i) for _, o, i in shape.linears()}:
        stored, metadata = flatten_tensor_state_dict(
            {"m.weight": quantized_weight(out_features, in_features)}
        )
        templates[(out_features, in_features)] = (
            metadata["m.weight"],
            sum(t.numel() * t.element_size() for t in stored.values()),
        )
    params: list[Param] = [("model.embed_tokens.weight", None, shape.vocab * shape.hidden * 2)]
    for layer in range(shape.num_layers):
        prefix = f"model.layers.{layer}"
        params.append((f"{prefix}.input_layernorm.weight", None, shape.hidden * 2))
        for name, out_features, in_features in shape.linears():
            params.append(
                (
                    f"{prefix}.{name}.weight",
                    (out_features, in_features),
                    templates[(out_features, in_features)][1],
                )
            )
        params.append((f"{prefix}.post_attention_layernorm.weight", None, shape.hidden * 2))
    params += [
        ("model.norm.weight", None, shape.hidden * 2),
        ("lm_head.weight", None, shape.vocab * shape.hidden * 2),
    ]
    metadata = {n: templates[s][0] if s else json.dumps({"_type": "Tensor"}) for n, s, _ in params}
    metadata["tensor_names"] = json.dumps([n for n, _, _ in params])
    metadata["format"] = "pt"
    return params, metadata


def _split_into_shards(params: list[Param], shard_mb: float) -> list[list[Param]]:
    """Consecutive parameters, as many per shard as fit in ``shard_mb`` (at least one)."""
    shards: list[list[Param]] = [[]]
    for param in params:
        if shards[-1] and sum(p[2] for p in shards[-1]) + param[2] > shard_mb * 1e6:
            shards.append([])
        shards[-1].append(param)
    return shards


def _write_shards(path: str, shards: list[list[Param]], metadata: dict[str, str], shape: LlamaShape,
                  quantized_weight, generator) -> tuple[dict[str, str], int]:  # fmt: skip
    """Each shard's tensors made and written one shard at a time; the weight map and data bytes."""
    import torch
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    from hf_torchao_vllm.conversion import safetensors_writer

    weight_map: dict[str, str] = {}
    total = 0
    for index, shard in enumerate(shards):
        file_name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        state = {}
        for name, linear_shape, _ in shard:
            if linear_shape is not None:
                state[name] = quantized_weight(*linear_shape)
            elif name.endswith("norm.weight"):
                state[name] = torch.ones(shape.hidden, dtype=torch.bfloat16)
            else:
                state[name] = torch.randn(shape.vocab, shape.hidden, generator=generator).to(torch.bfloat16)
        stored, _ = flatten_tensor_state_dict(state)
        del state
        total += safetensors_writer.write_safetensors(os.path.join(path, file_name), stored, metadata)
        weight_map.update(dict.fromkeys(stored, file_name))
        del stored
    return weight_map, total


def _dir_files(path: str) -> list[str]:
    return sorted(f for f in os.listdir(path) if os.path.isfile(os.path.join(path, f)))


@dataclasses.dataclass
class Timing:
    wall_s: list[float] = dataclasses.field(default_factory=list)
    cpu_s: list[float] = dataclasses.field(default_factory=list)

    def add(self, fn) -> None:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        self.wall_s.append(time.perf_counter() - start_wall)
        self.cpu_s.append(time.process_time() - start_cpu)

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)


def benchmark_conversion(dir_source: str, num_runs: int, work_dir: str) -> dict:
    """Time conversion and a plain copy of ``dir_source`` alternately, after a warm-up of each.

    Each run writes a new folder (the converter without ``--overwrite``, the copy into an empty
    folder) that is deleted after it was timed, so neither pays for deleting an earlier output, and
    starts after ``sync`` (untimed), so neither pays for writing back the other's dirty pages.
    """
    from hf_torchao_vllm.conversion.convert import convert_checkpoint

    files = _dir_files(dir_source)
    shards = [f for f in files if f.endswith(".safetensors")]
    total = sum(os.path.getsize(os.path.join(dir_source, s)) for s in shards)
    os.makedirs(work_dir)
    copy_dir, target = os.path.join(work_dir, "copy"), os.path.join(work_dir, "ct")

    def copy():
        os.mkdir(copy_dir)
        for name in files:
            shutil.copyfile(os.path.join(dir_source, name), os.path.join(copy_dir, name))

    summaries = []

    def convert():
        summaries.append(convert_checkpoint(dir_source, target))

    copies, conversions = Timing(), Timing()
    for index in range(num_runs + 1):  # run 0 is the warm-up
        for timing, fn, output in ((copies, copy, copy_dir), (conversions, convert, target)):
            os.sync()  # every run starts without a backlog of dirty pages to write back
            if index == 0:
                fn()
            else:
                timing.add(fn)
            shutil.rmtree(output)
    summaries = summaries[1:]
    return {
        "bytes": total,
        "shards": len(shards),
        "copy": copies,
        "convert": conversions,
        "largest_shard_bytes": summaries[-1].largest_shard_bytes,
        "peak_rss_delta_bytes": max(s.peak_rss_delta_bytes for s in summaries),
        "peak_rss_bytes": max(s.peak_rss_bytes for s in summaries),
    }


def _spread(timing: Timing) -> str:
    return f"{timing.median_s:.2f} ({min(timing.wall_s):.2f}-{max(timing.wall_s):.2f})"


def print_conversion_table(rows: dict[str, dict], load_before: float, num_runs: int) -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"conversion vs copy on CPU: median of {num_runs} alternating runs after a warm-up "
            f"(torch {torch.__version__}, {os.cpu_count()} CPUs; 1-minute load average "
            f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after)"
        )
    )
    for column in (
        "recipe",
        "input",
        "copy s (min-max)",
        "convert s (min-max)",
        "copy MB/s",
        "convert MB/s",
        "convert / copy speed",
        "CPU s copy / convert",
        "peak RSS growth / largest shard",
        "peak RSS",
    ):
        table.add_column(column)
    mb = 1e6
    for recipe, r in rows.items():
        copy_s, convert_s = r["copy"].median_s, r["convert"].median_s
        growth = max(r["peak_rss_delta_bytes"], 0)
        table.add_row(
            recipe,
            f"{r['bytes'] / mb:.0f} MB in {r['shards']} shards",
            _spread(r["copy"]),
            _spread(r["convert"]),
            f"{r['bytes'] / copy_s / mb:.0f}",
            f"{r['bytes'] / convert_s / mb:.0f}",
            f"{copy_s / convert_s:.2f}",
            f"{statistics.median(r['copy'].cpu_s):.2f} / {statistics.median(r['convert'].cpu_s):.2f}",
            f"{growth / mb:.0f} MB / {r['largest_shard_bytes'] / mb:.0f} MB "
            f"= {growth / r['largest_shard_bytes']:.2f}x",
            f"{r['peak_rss_bytes'] / mb:.0f} MB",
        )
    Console(width=200).print(table)


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


def run_vllm_table(model_path: str, recipes: list[str], batch: int, max_tokens: int, work_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from hf_torchao_vllm.conversion.convert import convert_checkpoint
    from hf_torchao_vllm.quantization.quantize import quantize_checkpoint

    paths = {"bf16": model_path}
    for recipe in recipes:
        source = os.path.join(work_dir, f"torchao_{recipe}")
        quantize_checkpoint(model_path, recipe, source)
        target = os.path.join(work_dir, f"ct_{recipe}")
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
    Console(width=120).print(table)


def main(
    recipes: str = "int8_weight_only,fp8_per_row",
    size_mb: float = 1100.0,
    shard_mb: float = 256.0,
    num_runs: int = 5,
    model: str | None = None,
    work_dir: str | None = None,
    vllm: bool = False,
    vllm_model: str = EMBEDDED_DENSE,
    vllm_recipes: str = "int8_dynamic_act_int8_weight,int4_weight_only",
    batch: int = 4,
    max_tokens: int = 32,
) -> None:
    """Print converter throughput against a plain copy (and, with --vllm, vLLM tokens/s per scheme).

    Args:
        recipes: comma-separated recipes of the generated checkpoints, from CONVERSION_RECIPES.
        size_mb: size of each generated checkpoint in MB (a Llama shape with enough layers).
        shard_mb: largest shard of the generated checkpoints in MB.
        num_runs: timed conversions and copies, alternating, after one warm-up of each.
        model: time this existing torchao checkpoint instead of generating any; also --dir_source.
        work_dir: where checkpoints, copies and conversions are written (default: the system temp
            folder); needs about 3x size_mb free; everything is deleted at the end.
        vllm: also run the vLLM generate benchmark (one process per configuration; minutes).
        vllm_model: bf16 model quantized for the vLLM table; also --model_path.
        vllm_recipes: comma-separated torchao recipes converted for the vLLM table.
        batch: prompts per vLLM generate call.
        max_tokens: tokens generated per prompt (EOS ignored).
    """
    from pytorch_scripts_common.torchao_env import configure_torchao_env

    configure_torchao_env()
    recipe_list = parse_list(recipes, str, name="recipes")
    unknown = [r for r in recipe_list if r not in CONVERSION_RECIPES]
    if unknown or not recipe_list:
        raise UsageError(
            f"--recipes {recipes!r} names {unknown or 'nothing'}: choose from {CONVERSION_RECIPES}"
        )
    if size_mb <= 0 or shard_mb <= 0 or num_runs < 1:
        raise UsageError("--size_mb, --shard_mb and --num_runs must be positive: pass e.g. --size_mb=1100")
    if model is not None and not os.path.isdir(model):
        raise UsageError(f"--model {model} is not a directory: pass a torchao checkpoint directory")
    if work_dir is not None:
        os.makedirs(work_dir, exist_ok=True)
    free_mb = shutil.disk_usage(work_dir or tempfile.gettempdir()).free / 1e6
    needed_mb = 3.2 * (size_mb if model is None else _dir_mb(model))
    if free_mb < needed_mb:
        raise UsageError(
            f"{work_dir or tempfile.gettempdir()} has {free_mb:.0f} MB free, the benchmark writes about "
            f"{needed_mb:.0f} MB: pass --work_dir on a larger disk or a smaller --size_mb"
        )

    load_before = os.getloadavg()[0]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="benchmark_conversion-", dir=work_dir) as tmp:
        if model is not None:
            rows[os.path.basename(os.path.normpath(model))] = benchmark_conversion(
                model, num_runs, os.path.join(tmp, "run")
            )
        for recipe in [] if model is not None else recipe_list:
            source = os.path.join(tmp, f"torchao_{recipe}")
            start = time.perf_counter()
            write_synthetic_checkpoint(source, recipe, size_mb, shard_mb)
            print(f"generated {recipe}: {_dir_mb(source):.0f} MB in {time.perf_counter() - start:.1f} s")
            rows[recipe] = benchmark_conversion(source, num_runs, os.path.join(tmp, f"run_{recipe}"))
            shutil.rmtree(source)
        print_conversion_table(rows, load_before, num_runs)
        if vllm:
            run_vllm_table(
                vllm_model, parse_list(vllm_recipes, str, name="vllm_recipes"), batch, max_tokens, tmp
            )


def _dir_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in _dir_files(path)) / 1e6


# This tool's former flag names.
FLAG_ALIASES = {"dir_source": "model", "model_path": "vllm_model"}

if __name__ == "__main__":
    run(main, aliases=FLAG_ALIASES)
