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


# The files with the most test time (seconds on the 2-core CI machine, two workers), collected first:
# with --dist loadfile the workers take files in collection order, and a long file taken last runs
# alone at the end while the other worker idles. The order within a file is kept.
LONGEST_FIRST = (
    "tests/gpu/test_run_checks.py",  # 172 s
    "tests/hf_torchao_vllm/test_architecture_matrix.py",  # 121 s
    "tests/dtensor_parallelisms/test_torchrun.py",  # 119 s
    "tests/dp2ep/test_main_torchrun.py",  # 119 s
    "tests/hf_torchao_vllm/test_quantize.py",  # 87 s
    "tests/test_hostile_cli.py",  # 80 s
    "tests/hf_torchao_vllm/test_flags.py",  # 71 s
    "tests/graph_viz/test_browser.py",  # 71 s
    "tests/llvm_e8m0/test_sweep.py",  # 69 s
    "tests/graph_viz/test_make_sample_logs.py",  # 62 s
    "tests/hf_torchao_vllm/test_pipeline.py",  # 61 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    root = config.rootpath
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))  # stable

    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="gpu_only: needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "gpu_only" in item.keywords:
            item.add_marker(skip_gpu)
