"""Suite-wide pytest set-up: CUDA gating for ``gpu_only``, quiet torchao imports on CPU-only torch, and
OpenMP threads that sleep when idle."""

import os

import pytest

from pytorch_scripts_common.torchao_env import configure_torchao_env

# torchao 0.18 loads its CUDA extensions (_C_mxfp8, _C_cutlass_90a) at import and prints a failure
# for each on a CPU build of torch: skipped there (only there), before anything imports torchao.
configure_torchao_env()

# The xdist workers, and the processes they start, each run torch's OpenMP pool with a thread per core,
# so the machine has several threads per core. libgomp's default lets an idle thread spin before it
# sleeps, taking the core from the threads with work: measured on the 2-core CI machine, the 18 dense
# and MoE recipe tests of test_quantize.py took 196 s on two workers, 57 s with PASSIVE. Set before
# anything imports torch (libgomp reads it when it loads); children inherit it; a value set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="gpu_only: needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu_only" in item.keywords:
            item.add_marker(skip_gpu)
