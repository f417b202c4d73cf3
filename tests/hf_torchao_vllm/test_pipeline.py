"""The main demo (README command 1): torchao -> compressed-tensors -> validation -> vLLM on CPU."""

import json
import os
import subprocess
import sys

import pytest

from hf_torchao_vllm import run_pipeline


def test_unknown_recipe_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'int3': choose one of none, int8_weight_only"):
        run_pipeline.main(recipe="int3", output_dir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_model_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run_pipeline.main(model=str(tmp_path / "nope"), output_dir=str(tmp_path / "out"))


def test_output_around_the_model_is_refused(tmp_path):
    import shutil

    model = tmp_path / "m" / "dense"
    shutil.copytree(run_pipeline.EMBEDDED_DENSE_MODEL, model)
    for output in (model, model.parent):
        with pytest.raises(ValueError, match="the input"):
            run_pipeline.main(model=str(model), output_dir=str(output), overwrite=True)
    assert (model / "model.safetensors").is_file()


@pytest.mark.slow
def test_pipeline_end_to_end(tmp_path):
    out = tmp_path / "pipeline"
    cmd = [sys.executable, "-m", "hf_torchao_vllm.run_pipeline", f"--output_dir={out}", "--max_tokens=8"]
    env = {**os.environ, "TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hf_torchao_vllm pipeline" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compressed_tensors_schemes"] == {
        "W8A8_INT8": summary["compressed_tensors_schemes"]["W8A8_INT8"]
    }
    assert summary["validation"]["bit_exact"] == summary["validation"]["tensors_compared"] > 0
    assert summary["vllm"]["kl_transformers_vs_vllm"] <= run_pipeline.VLLM_KL_THRESHOLD
    assert len(summary["vllm"]["completions"]) == len(summary["vllm"]["prompts"]) == 4
    config = json.loads((out / "compressed_tensors" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (
        json.loads((out / "torchao" / "config.json").read_text())["quantization_config"]["quant_method"]
        == "torchao"
    )
    # A second run refuses to overwrite the output without --overwrite, and leaves it intact.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_max_tokens_below_one_is_refused_before_quantizing(tmp_path, max_tokens):
    with pytest.raises(ValueError, match=rf"--max_tokens is {max_tokens}: pass an integer >= 1"):
        run_pipeline.main(output_dir=str(tmp_path / "o"), max_tokens=max_tokens)
    assert not (tmp_path / "o").exists()
