"""torchao's import-time environment: skip its CUDA kernel libraries only where torch has no GPU.

torchao loads its compiled CUDA extensions (``_C_mxfp8``, ``_C_cutlass_90a``, ...) when it is
imported; on a CPU-only build of torch each load fails and prints a message.
``TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1`` skips them, which on a GPU build would also disable
torchao's CUDA kernels. ``configure_torchao_env()`` sets it to ``1`` on CPU-only torch builds only,
and never changes a value already in the environment (the user's choice, or gpu/runner.py's).
``pytorch_scripts_common.cli.run`` calls it before the tool runs; child processes inherit it.

Whether the build is CPU-only is decided without importing torch where possible (every tool pays
for the check, most do not need torch): by ``torch.version`` when torch is imported already, else
by the version's local tag (``+cpu`` / ``+cu…`` / ``+rocm…``), else by the libraries the installed
package ships (``libtorch_cuda`` / ``libtorch_hip`` next to ``libtorch_cpu``), and only when none
of these says (an unusual install) by importing torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import sys

__all__ = [
    "SKIP_SO_FILES",
    "configure_torchao_env",
    "cpu_only_from_libraries",
    "cpu_only_from_version",
    "torch_is_cpu_only",
]

SKIP_SO_FILES = "TORCHAO_FORCE_SKIP_LOADING_SO_FILES"
GPU_LIBRARIES = ("libtorch_cuda", "torch_cuda", "libtorch_hip", "torch_hip")  # .so on Linux, .dll on Windows
CPU_LIBRARIES = ("libtorch_cpu", "torch_cpu")


def cpu_only_from_version(version: str) -> bool | None:
    """What torch's version string says: True for ``+cpu`` builds, False for ``+cu…`` / ``+rocm…``
    builds, None when it does not say (PyPI's default wheels, NGC's ``+<git>.nv…`` builds)."""
    local = version.partition("+")[2].lower()
    if local == "cpu" or local.startswith("cpu."):  # "+cpu", older "+cpu.cxx11.abi"
        return True
    if local.startswith(("cu", "rocm")):
        return False
    return None


def cpu_only_from_libraries(lib_dir: pathlib.Path) -> bool | None:
    """What the libraries in torch's ``lib`` folder say: False with a CUDA or ROCm library, True with
    only the CPU one, None when the folder does not hold torch's libraries."""
    names = [path.name for path in lib_dir.iterdir()] if lib_dir.is_dir() else []
    if any(name.startswith(GPU_LIBRARIES) for name in names):
        return False
    if any(name.startswith(CPU_LIBRARIES) for name in names):
        return True
    return None


def _torch_lib_dir() -> pathlib.Path | None:
    """torch's ``lib`` folder, found without importing torch; None when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "lib"


def torch_is_cpu_only() -> bool:
    """Whether the installed torch was built without CUDA and without ROCm (see the module doc)."""
    if "torch" not in sys.modules:
        lib_dir = _torch_lib_dir()
        if lib_dir is None:
            return True  # no torch installed: nothing with a GPU for torchao to use
        try:
            said = cpu_only_from_version(importlib.metadata.version("torch"))
        except importlib.metadata.PackageNotFoundError:
            said = None
        if said is None:
            said = cpu_only_from_libraries(lib_dir)
        if said is not None:
            return said
    import torch

    return torch.version.cuda is None and torch.version.hip is None


def configure_torchao_env() -> None:
    """Set ``TORCHAO_FORCE_SKIP_LOADING_SO_FILES=1`` on a CPU-only torch, unless it is set already."""
    if SKIP_SO_FILES in os.environ:
        return
    if torch_is_cpu_only():
        os.environ[SKIP_SO_FILES] = "1"
