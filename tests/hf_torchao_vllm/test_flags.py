"""One flag name per idea across the scripts, and the original scripts' commands still running here:
their flag names are aliases (pytorch_scripts_common.cli.run's ``aliases``) of ours."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hf_torchao_vllm import quantize_hf_model_with_torchao as quantize_script
from hf_torchao_vllm.quantization import recipes
from tests.forked_cli import run_forked
from tests.hf_torchao_vllm.test_quantize_readme import ENTRY_SCRIPTS
from tests.hf_torchao_vllm.test_vllm import TORCHAO_VLLM_KL_BOUND

REPO_ROOT = Path(__file__).resolve().parents[2]
FOLDER = REPO_ROOT / "hf_torchao_vllm"
DENSE = FOLDER / "embedded_models" / "dense"
# Spellings of "the input model" that only aliases may use.
FORMER_INPUT_NAMES = {
    "model_name",
    "model_path",
    "quantized_dir",
    "checkpoint_dir",
    "dir_source",
    "dir_target",
}
# The quant_type values of the original quantize script: each is a recipe name or alias here.
ORIGINAL_QUANT_TYPES = ("fp8", "int4_weight_only", "int8_weight_only", "mxfp8", "mxfp4", "nvfp4")
ENV = {**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1", "COLUMNS": "200"}  # wide rich tables


def entry_module(name: str):
    return importlib.import_module(f"hf_torchao_vllm.{name}")


@pytest.mark.parametrize("name", sorted(ENTRY_SCRIPTS))
def test_entry_points_use_one_name_per_idea_and_document_their_aliases(name):
    module = entry_module(name)
    parameters = inspect.signature(module.main).parameters
    assert not FORMER_INPUT_NAMES & set(parameters), f"{name}: rename to --model / --output_dir / --reference"
    aliases = getattr(module, "FLAG_ALIASES", {})
    for alias, target in aliases.items():
        assert target in parameters, (name, alias, target)
        assert alias not in parameters, (name, alias)
        assert f"--{alias}" in module.main.__doc__, f"{name}: --help does not mention --{alias}"
    for flag in getattr(module, "FIXED_FLAGS", {}):
        assert f"--{flag}" in module.main.__doc__, f"{name}: --help does not mention --{flag}"


def test_original_quant_types_are_recipes():
    for name in ORIGINAL_QUANT_TYPES:
        recipe, _ = recipes.resolve(name)
        assert recipe.name == name  # the original names are the registry's own names


def script(name: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The original invocation form: the script path, space-separated flag values."""
    return subprocess.run(
        [sys.executable, str(FOLDER / f"{name}.py"), *args],
        capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_original_commands_quantize_serve_and_convert_the_embedded_model(tmp_path):
    """The original scripts' commands chained as their users ran them: quantize into the default output
    folder, serve that with vLLM, convert it to compressed-tensors. (The quantize tool's own smoke test
    and its vLLM serving are these steps: one quantize run and one vLLM start for all of them.)"""
    # --eval_tokens / --max_new_tokens only shorten the quality report
    quantize_args = [
        "--model_name", str(DENSE), "--quant_type", "int8_weight_only", "--save_model_to_disk", "True",
        "--eval_tokens", "64", "--max_new_tokens", "2",
    ]  # fmt: skip
    quantize = script("quantize_hf_model_with_torchao", *quantize_args, cwd=tmp_path)
    assert quantize.returncode == 0, quantize.stdout[-2000:] + quantize.stderr[-2000:]
    assert "logits SQNR vs bf16 (dB)" in quantize.stdout and "bit-identical" in quantize.stdout
    assert "vLLM can serve this checkpoint" in quantize.stdout
    torchao_dir = tmp_path / "outputs" / "hf_torchao_vllm" / "dense-int8_weight_only"  # the default output
    assert {p.name for p in torchao_dir.iterdir()} == {
        ".pytorch_scripts_output", "config.json", "generation_config.json", quantize_script.REPORT_FILE,
        "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    }  # fmt: skip
    report = json.loads((torchao_dir / quantize_script.REPORT_FILE).read_text())
    assert report["recipe"] == "int8_weight_only" and report["model"] == str(DENSE)
    config = json.loads((torchao_dir / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    again = script("quantize_hf_model_with_torchao", *quantize_args, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        "error: --output_dir outputs/hf_torchao_vllm/dense-int8_weight_only exists: pass --overwrite to "
        "replace it, or choose another path"
    ], again.stderr

    serve = script(
        "run_quantized_model_in_vllm", "--model_name", str(torchao_dir), "--compile", "False",
        "--max_tokens", "8", "--compare_with_transformers", cwd=tmp_path,
    )  # fmt: skip
    assert serve.returncode == 0, serve.stdout[-3000:] + serve.stderr[-3000:]
    out = serve.stdout
    assert "quantization: torchao" in out and "greedy generations" in out
    # every linear layer, fused ones included, runs torchao's method; none falls back to bf16
    assert re.search(r"self_attn\.qkv_proj\s+│\s*QKVParallelLinear\s*│\s*TorchAOLinearMethod", out), out
    assert re.search(r"mlp\.gate_up_proj\s+│\s*MergedColumnParallelLinear\s*│\s*TorchAOLinearMethod", out)
    assert "UnquantizedLinearMethod" not in out
    kl = re.search(r"mean KL (\S+) nats", out)
    assert kl and float(kl.group(1)) <= TORCHAO_VLLM_KL_BOUND, out[-3000:]

    convert = script(
        "convert_torchao_checkpoint_to_compressed_tensors",
        "--dir_source", str(torchao_dir), "--dir_target", "ct",
        cwd=tmp_path,
    )  # fmt: skip
    assert convert.returncode == 0, convert.stdout[-2000:] + convert.stderr[-2000:]
    assert "validation passed" in convert.stdout
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"


@pytest.mark.parametrize(
    ("name", "args", "line"),
    [
        ("quantize_hf_model_with_torchao", ["--model_name", str(DENSE), "--quant_type", "nvfp4"],
         "error: recipe 'nvfp4' is not supported on cpu: torchao's NVFP4 dynamic-activation mode asserts an "
         "sm100+ GPU. Recipes that run on cpu: "),
        ("quantize_hf_model_with_torchao", ["--model_name", str(DENSE), "--quant_type", "fp8"],
         "error: recipe 'fp8' (dynamic float8 activations) is refused by torchao on CPU by a hardware check: "
         "pass --fp8_emulation_on_cpu=True"),
        ("quantize_hf_model_with_torchao", ["--model_name", str(DENSE), "--save_model_to_disk", "False"],
         "error: --save_model_to_disk=False is not supported: this tool always saves the model, to "
         "--output_dir: drop --save_model_to_disk"),
        ("quantize_hf_model_with_torchao", ["--model_name", str(DENSE), "--model", str(DENSE)],
         "error: --model_name and --model both set --model: pass it once, as --model"),
        ("run_quantized_model_in_vllm", ["--model_name", "nope", "--compile", "False"],
         "error: --model 'nope' has no config.json: pass a checkpoint directory"),
        ("convert_torchao_checkpoint_to_compressed_tensors", ["--dir_source", "nope", "--dir_target", "ct"],
         "error: torchao checkpoint nope does not exist: pass a checkpoint directory"),
    ],
)  # fmt: skip
def test_original_commands_with_mistakes_are_refused_in_one_line(tmp_path, name, args, line):
    if name == "quantize_hf_model_with_torchao":
        args = [*args, "--output_dir", "out"]
    proc = run_forked(FOLDER / f"{name}.py", args, cwd=tmp_path, env=ENV)  # as script() runs it
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().startswith(line), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(os.listdir(tmp_path)) == []  # nothing written
