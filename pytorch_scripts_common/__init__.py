"""What the pytorch_scripts folders share; each folder is otherwise standalone (see README.md).

- ``idioms``: ``set_seed``, ``get_device``, ``benchmark``, ``compute_sqnr`` (imported lazily from
  here, so that ``import pytorch_scripts_common.cli`` does not import torch).
- ``cli``: ``run`` (fire with one-line errors for user mistakes), ``UsageError``, ``parse_list``,
  ``signals_deferred``.
- ``torchao_env``: ``configure_torchao_env`` (skip torchao's CUDA libraries on CPU-only torch only).
- ``outputs``: the output-path guard and atomic publishing of output folders and files.
- ``distributed``: torchrun entry points (launch checks, process group, one-line errors from one
  rank) and ``compare`` / ``Tolerance`` for a parallel run against its reference.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BenchmarkResult", "benchmark", "compute_sqnr", "get_device", "set_seed"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("pytorch_scripts_common.idioms"), name)
    raise AttributeError(f"module 'pytorch_scripts_common' has no attribute {name!r}")
