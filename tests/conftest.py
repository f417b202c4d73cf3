"""Suite-wide pytest set-up: CUDA gating for ``gpu_only`` and quiet torchao imports on CPU-only torch."""

import pytest

from pytorch_scripts_common.torchao_env import configure_torchao_env

# torchao 0.18 loads its CUDA extensions (_C_mxfp8, _C_cutlass_90a) at import and prints a failure
# for each on a CPU build of torch: skipped there (only there), before anything imports torchao.
configure_torchao_env()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="gpu_only: needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu_only" in item.keywords:
            item.add_marker(skip_gpu)
