"""inspect_checkpoint: torchao, compressed-tensors, sharded and .bin checkpoints; never modifies its
input; hostile inputs are warnings (errors with strict=True)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hf_torchao_vllm import quantize_hf_model_with_torchao as quantize_script
from hf_torchao_vllm.conversion.checkpoint_summary import inspect_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
DENSE = str(REPO_ROOT / "hf_torchao_vllm" / "embedded_models" / "dense")


def _hashes(directory: Path) -> dict[str, tuple[str, float]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


@pytest.fixture(scope="module")
def int8_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "int8"
    quantize_script.main(
        model=DENSE,
        recipe="int8_weight_only",
        output_dir=str(out),
        max_new_tokens=2,
        eval_tokens=64,
        prompts=["A"],
    )
    return out


def test_torchao_checkpoint_summary_and_files_untouched(int8_checkpoint, tmp_path):
    before = _hashes(int8_checkpoint)
    summary = inspect_checkpoint(int8_checkpoint)
    assert _hashes(int8_checkpoint) == before
    assert summary.format == "torchao"
    by_name = {w.name: w for w in summary.weights}
    q_proj = by_name["model.layers.0.self_attn.q_proj.weight"]
    assert q_proj.stored_type == "Int8Tensor"
    assert (q_proj.dtype, q_proj.shape, q_proj.scale_shape) == ("I8", [256, 256], [256, 1])
    assert by_name["lm_head.weight"].stored_type == "plain"
    assert sum(w.stored_type == "Int8Tensor" for w in summary.weights) == 28
    assert summary.total_bytes == sum(t.num_bytes for t in summary.tensors)
    # the CLI with a JSON report (written outside the checkpoint) also leaves the files alone
    json_path = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hf_torchao_vllm" / "inspect_checkpoint.py"),
         f"--model={int8_checkpoint}", f"--json_output={json_path}", "--show_tensors=True"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Int8Tensor" in result.stdout
    assert json.loads(json_path.read_text())["stored_type_counts"]["Int8Tensor"] == 28
    assert _hashes(int8_checkpoint) == before


def test_json_output_inside_checkpoint_is_refused(int8_checkpoint):
    from hf_torchao_vllm.inspect_checkpoint import main

    with pytest.raises(ValueError, match="is inside the input"):
        main(model=str(int8_checkpoint), json_output=str(int8_checkpoint / "x.json"))
    assert not (int8_checkpoint / "x.json").exists()


def _write_compressed_tensors_checkpoint(directory: Path) -> None:
    directory.mkdir()
    save_file(
        {
            "model.layers.0.mlp.up_proj.weight_packed": torch.zeros(768, 32, dtype=torch.int32),
            "model.layers.0.mlp.up_proj.weight_scale": torch.ones(768, 2, dtype=torch.bfloat16),
            "model.layers.0.mlp.up_proj.weight_shape": torch.tensor([768, 256]),
            "model.norm.weight": torch.ones(256, dtype=torch.bfloat16),
        },
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    config = {
        "model_type": "llama",
        "quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"},
    }
    (directory / "config.json").write_text(json.dumps(config))


def test_compressed_tensors_roles(tmp_path):
    _write_compressed_tensors_checkpoint(tmp_path / "ct")
    summary = inspect_checkpoint(tmp_path / "ct")
    assert summary.format == "compressed-tensors"
    roles = {t.name.rpartition(".")[2]: t.stored_type for t in summary.tensors}
    assert roles == {
        "weight_packed": "weight_packed",
        "weight_scale": "weight_scale",
        "weight_shape": "weight_shape",
        "weight": "plain",
    }
    up = {w.name: w for w in summary.weights}["model.layers.0.mlp.up_proj.weight"]
    assert up.stored_type == "compressed-tensors:weight_packed+weight_scale+weight_shape"
    assert (up.dtype, up.shape, up.scale_shape) == ("I32", [768, 32], [768, 2])
    assert up.num_bytes == 768 * 32 * 4 + 768 * 2 * 2 + 2 * 8


def test_sharded_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DENSE, dtype=torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="3MB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 1
    summary = inspect_checkpoint(tmp_path / "sharded")
    assert {t.file for t in summary.tensors} == set(shards)
    assert summary.total_bytes == sum(p.numel() * 2 for p in model.parameters())
    assert summary.warnings == []


def test_bin_checkpoint_and_hostile_pickle(tmp_path):
    good = tmp_path / "bin"
    good.mkdir()
    (good / "config.json").write_text("{}")
    torch.save({"a.weight": torch.ones(4, 8, dtype=torch.bfloat16)}, good / "pytorch_model.bin")
    summary = inspect_checkpoint(good)
    assert [(t.name, t.dtype, t.shape, t.num_bytes) for t in summary.tensors] == [
        ("a.weight", "BF16", [4, 8], 64)
    ]

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "config.json").write_text("{}")
    torch.save({"a": _Hostile()}, hostile / "pytorch_model.bin")  # arbitrary object: weights_only refuses
    unsafe = r"cannot load .*pytorch_model\.bin with torch\.load\(weights_only=True\)"
    with pytest.warns(UserWarning, match=unsafe):
        summary = inspect_checkpoint(hostile)
    assert summary.tensors == []
    with pytest.raises(ValueError, match=unsafe):
        inspect_checkpoint(hostile, strict=True)


class _Hostile:
    pass


def test_truncated_safetensors_and_bad_index(tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    save_file({"x": torch.ones(8)}, str(directory / "model-00001-of-00002.safetensors"))
    data = (directory / "model-00001-of-00002.safetensors").read_bytes()
    (directory / "model-00002-of-00002.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    index = {"weight_map": {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors",
                            "z": "../outside.safetensors", "w": "missing.safetensors"}}  # fmt: skip
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    before = _hashes(directory)
    with pytest.warns(UserWarning):
        summary = inspect_checkpoint(directory)
    assert [t.name for t in summary.tensors] == ["x"]
    assert len(summary.warnings) == 3  # outside file, missing file, truncated shard
    assert _hashes(directory) == before
    with pytest.raises(ValueError, match="maps 'z' to '../outside.safetensors', not a file name in"):
        inspect_checkpoint(directory, strict=True)


def test_malformed_index_and_config_fall_back(tmp_path):
    directory = tmp_path / "bad"
    directory.mkdir()
    (directory / "config.json").write_text("{not json")
    (directory / "model.safetensors.index.json").write_text("[1, 2")
    save_file({"x": torch.ones(8)}, str(directory / "model.safetensors"))
    with pytest.warns(UserWarning):
        summary = inspect_checkpoint(directory)
    assert [t.name for t in summary.tensors] == ["x"]
    assert len(summary.warnings) == 2


def test_missing_or_empty_dir_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        inspect_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weight files .*: pass a Hugging Face checkpoint directory"):
        inspect_checkpoint(tmp_path / "empty")


def test_torchao_bin_checkpoint(int8_checkpoint, tmp_path):
    """A torchao state dict pickled with torch.save (.bin) is read with weights_only=True."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(int8_checkpoint, dtype=torch.bfloat16)
    directory = tmp_path / "bin"
    directory.mkdir()
    (directory / "config.json").write_text((int8_checkpoint / "config.json").read_text())
    torch.save(model.state_dict(), directory / "pytorch_model.bin")
    summary = inspect_checkpoint(directory)
    by_name = {w.name: w for w in summary.weights}
    down = by_name["model.layers.0.mlp.down_proj.weight"]
    assert (down.stored_type, down.dtype, down.shape, down.scale_shape) == (
        "Int8Tensor",
        "I8",
        [256, 768],
        [256, 1],
    )
    assert summary.warnings == []


def test_evaluate_quality_cli_writes_json(int8_checkpoint, tmp_path):
    from hf_torchao_vllm.evaluate_quality import main

    json_path = tmp_path / "quality.json"
    main(model=str(int8_checkpoint), reference=DENSE, max_tokens=256, json_output=str(json_path))
    quality = json.loads(json_path.read_text())
    assert quality["num_tokens_scored"] == 255
    assert quality["logits_sqnr_db"] > 40.0  # int8 weight-only measured 47.3 dB on 1,023 tokens
    assert 0.6 < quality["size_ratio"] < 0.75
    with pytest.raises(ValueError, match="exists: pass --overwrite"):
        main(model=str(int8_checkpoint), json_output=str(json_path))


def test_sub_byte_dtypes_are_summarized_and_not_viewed(tmp_path):
    """safetensors' F4 (4 bits per element) has no torch dtype: sizes come from the one dtype table,
    and the converter's ShardReader refuses to view it in one line."""
    from hf_torchao_vllm.conversion.checkpoint_reader import ShardReader

    directory = tmp_path / "f4"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    header = json.dumps({"w": {"dtype": "F4", "shape": [2, 8], "data_offsets": [0, 8]}}).encode()
    header += b" " * (-len(header) % 8)
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    summary = inspect_checkpoint(directory, strict=True)
    assert [(t.name, t.dtype, t.shape, t.num_bytes) for t in summary.tensors] == [("w", "F4", [2, 8], 8)]
    with pytest.raises(ValueError, match="tensor 'w' is stored as F4, which torch cannot view"):
        ShardReader(str(directory / "model.safetensors")).get_tensor("w")
