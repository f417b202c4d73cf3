"""transformers' stored vs in-memory names (``checkpoint_names``), against checkpoint layouts written
down by hand from the architectures' published checkpoints, and a torchao checkpoint of a renamed
MoE architecture converted end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from hf_torchao_vllm import tiny_models
from hf_torchao_vllm.conversion import checkpoint_reader
from hf_torchao_vllm.conversion.checkpoint_names import CheckpointNaming, ExpertSlice
from hf_torchao_vllm.conversion.convert import convert_checkpoint
from hf_torchao_vllm.conversion.validate import load_every_weight, validate_weights
from hf_torchao_vllm.quantization import recipes
from hf_torchao_vllm.quantization.quantize import quantize_checkpoint


def naming_of(tmp_path, model_type: str, architecture: str) -> CheckpointNaming:
    config = tiny_models.tiny_config(model_type)
    config.architectures = [architecture]
    config.save_pretrained(tmp_path)
    return CheckpointNaming(str(tmp_path))


def test_mixtral_experts_are_stored_as_w1_w3_w2_under_block_sparse_moe(tmp_path):
    # Mixtral's checkpoints: block_sparse_moe.experts.<e>.w1 (gate), w3 (up), w2 (down), [out, in] each.
    naming = naming_of(tmp_path, "mixtral", "MixtralForCausalLM")
    layer = "model.layers.0"
    assert naming.stored_name(f"{layer}.mlp.experts._gate_up_proj_qdata") == (
        f"{layer}.block_sparse_moe.experts._gate_up_proj_qdata"
    )
    assert naming.memory_module(f"{layer}.block_sparse_moe.gate") == f"{layer}.mlp.gate"
    assert naming.memory_module(f"{layer}.self_attn.q_proj") == f"{layer}.self_attn.q_proj"
    # tiny config: 4 experts, intermediate 256 -> gate_up [4, 512, 128], down [4, 128, 256]
    gate_up = naming.expert_slices(f"{layer}.mlp.experts.gate_up_proj", (4, 512, 128))
    assert gate_up[:2] == [
        ExpertSlice(f"{layer}.block_sparse_moe.experts.0.w1.weight", 0, 0, 256),
        ExpertSlice(f"{layer}.block_sparse_moe.experts.0.w3.weight", 0, 256, 512),
    ]
    assert len(gate_up) == 8 and gate_up[-1] == ExpertSlice(
        f"{layer}.block_sparse_moe.experts.3.w3.weight", 3, 256, 512
    )
    down = naming.expert_slices(f"{layer}.mlp.experts.down_proj", (4, 128, 256))
    assert [s.name for s in down] == [f"{layer}.block_sparse_moe.experts.{e}.w2.weight" for e in range(4)]
    assert all((s.start, s.stop) == (0, 128) for s in down)


def test_qwen3_moe_experts_are_stored_as_gate_up_down_proj(tmp_path):
    naming = naming_of(tmp_path, "qwen3_moe", "Qwen3MoeForCausalLM")
    slices = naming.expert_slices("model.layers.0.mlp.experts.gate_up_proj", (4, 256, 128))
    assert slices[:2] == [
        ExpertSlice("model.layers.0.mlp.experts.0.gate_proj.weight", 0, 0, 128),
        ExpertSlice("model.layers.0.mlp.experts.0.up_proj.weight", 0, 128, 256),
    ]
    assert naming.stored_name("model.layers.0.self_attn.q_proj._weight_qdata") == (
        "model.layers.0.self_attn.q_proj._weight_qdata"
    )


def test_fused_checkpoints_have_no_per_expert_weights(tmp_path):
    # GraniteMoe stores its experts fused as block_sparse_moe.input_linear.weight; gpt-oss as they are.
    granite = naming_of(tmp_path / "granite", "granitemoe", "GraniteMoeForCausalLM")
    assert (
        granite.expert_slices("model.layers.0.block_sparse_moe.experts.gate_up_proj", (4, 512, 128)) is None
    )
    gpt_oss = naming_of(tmp_path / "gpt_oss", "gpt_oss", "GptOssForCausalLM")
    assert gpt_oss.expert_slices("model.layers.0.mlp.experts.down_proj", (4, 256, 128)) is None


def test_renamed_dense_architectures(tmp_path):
    hrm = naming_of(tmp_path / "hrm", "hrm_text", "HrmTextForCausalLM")
    memory = "model.L_module.layers.0.self_attn.o_proj"
    assert hrm.stored_name(f"{memory}._weight_scale") == "model.L_module.layers.0.attn.o_proj._weight_scale"
    assert hrm.memory_module("model.L_module.layers.0.attn.o_proj") == memory
    nemotron = naming_of(tmp_path / "nemotron", "nemotron_h", "NemotronHForCausalLM")
    assert nemotron.stored_name("model.layers.0.mixer.in_proj._weight_qdata") == (
        "backbone.layers.0.mixer.in_proj._weight_qdata"
    )
    assert nemotron.memory_module("backbone.layers.0.mixer.in_proj") == "model.layers.0.mixer.in_proj"


def test_an_architecture_transformers_does_not_know_keeps_every_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-model", "architectures": ["X"]}))
    naming = CheckpointNaming(str(tmp_path))
    assert naming.stored_name("model.layers.0.mlp.experts._gate_up_proj_qdata").startswith(
        "model.layers.0.mlp"
    )
    assert naming.memory_module("a.b") == "a.b"
    assert naming.expert_slices("model.layers.0.mlp.experts.gate_up_proj", (2, 4, 4)) is None
    assert naming.linear_modules() is None


@pytest.fixture(scope="module")
def mixtral_torchao(tmp_path_factory):
    work = tmp_path_factory.mktemp("mixtral")
    architecture = tiny_models.Architecture("mixtral", "MixtralForCausalLM", "MixtralForCausalLM")
    bf16 = tiny_models.save_tiny_model(architecture, work / "bf16")
    quantize_checkpoint(
        str(bf16), "int8_weight_only", str(work / "torchao"), options=recipes.RecipeOptions(),
        device=torch.device("cpu"),
    )  # fmt: skip
    return work / "torchao"


def test_renamed_moe_checkpoint_converts_to_the_stored_layout(mixtral_torchao, tmp_path):
    """transformers stores the torchao experts under block_sparse_moe but names them mlp in the
    metadata: the reader finds them, the converter writes Mixtral's per-expert w1/w3/w2, and
    transformers loads every weight of the result."""
    ckpt = checkpoint_reader.open_torchao_checkpoint(str(mixtral_torchao))
    fused = "model.layers.0.block_sparse_moe.experts.gate_up_proj"
    assert ckpt.params[fused]["_type"] == "Int8Tensor"
    assert ckpt.memory_name(fused) == "model.layers.0.mlp.experts.gate_up_proj"
    target = tmp_path / "ct"
    convert_checkpoint(str(mixtral_torchao), str(target))
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    for e in range(4):
        for w in ("w1", "w2", "w3"):
            assert f"model.layers.0.block_sparse_moe.experts.{e}.{w}.weight_packed" in names
    assert not any(".experts.0.gate_proj" in n for n in names)
    assert validate_weights(str(mixtral_torchao), str(target)).ok
    load_every_weight(str(target))


def test_inspect_reads_a_renamed_checkpoint_without_warnings(mixtral_torchao):
    from hf_torchao_vllm.conversion.checkpoint_summary import inspect_checkpoint

    summary = inspect_checkpoint(mixtral_torchao, strict=True)
    experts = {w.name: w for w in summary.weights if "block_sparse_moe.experts" in w.name}
    fused = experts["model.layers.0.block_sparse_moe.experts.gate_up_proj"]
    assert fused.stored_type.startswith("Int8Tensor")
    assert summary.warnings == []


def test_two_parameters_stored_under_one_name_are_a_problem():
    """A hostile header naming a parameter both in memory and as stored: reported, not overwritten."""
    import json as json_

    class Renaming:
        def stored_name(self, name):
            return name.replace(".mlp.", ".block_sparse_moe.")

    entry = json_.dumps({"_type": "Int8Tensor", "_data": {}, "_tensor_data_names": ["qdata", "scale"]})
    names = ["m.0.mlp.experts.gate_up_proj", "m.0.block_sparse_moe.experts.gate_up_proj"]
    metadata = {"tensor_names": json_.dumps(names)} | dict.fromkeys(names, entry)
    stored = [f"m.0.block_sparse_moe.experts._gate_up_proj_{p}" for p in ("qdata", "scale")]
    with pytest.raises(ValueError, match=r"are stored under one name"):
        checkpoint_reader.parse_torchao_metadata(metadata, stored, "ckpt", naming=Renaming(), memory_names={})
