"""Suite-wide pytest set-up: CUDA gating for ``gpu_only`` and quiet torchao imports."""

import os

import pytest

# torchao 0.18 tries to load its CUDA-only extensions (_C_mxfp8, _C_cutlass_90a) at import and
# prints a failure for each on a CPU build of torch. Must be set before anything imports torchao.
os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="gpu_only: needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu_only" in item.keywords:
            item.add_marker(skip_gpu)
