"""Seeding, device choice, timing and SQNR: the torch idioms every experiment does the same way.

- ``set_seed(seed)`` seeds Python's ``random``, NumPy and torch (CPU and every CUDA device).
- ``get_device()`` is ``cuda`` when available, else ``cpu``.
- ``benchmark(fn)`` is the median wall time of repeated calls after warm-up: CUDA events on CUDA
  (synchronised), ``time.perf_counter`` on CPU.
- ``compute_sqnr(ref, test)`` is the signal-to-quantization-noise ratio in dB, as torchao's
  ``compute_error``: ``20 * log10(||ref|| / ||ref - test||)``; ``inf`` for identical tensors.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "BenchmarkResult",
    "benchmark",
    "compute_sqnr",
    "get_device",
    "set_seed",
]


def set_seed(seed: int) -> None:
    """Seed ``random``, NumPy and torch on the CPU and on every CUDA device."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seeding accepts only 32 bits
    torch.manual_seed(seed)  # also seeds every CUDA device (torch.cuda.manual_seed_all)


def get_device() -> torch.device:
    """``cuda`` (the current device) when CUDA is available, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Wall-clock times in seconds of ``num_runs`` calls measured after ``num_warmup`` calls."""

    times_s: tuple[float, ...]
    num_warmup: int
    device: str

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def __str__(self) -> str:
        return (
            f"median {self.median_s * 1e3:.3f} ms over {len(self.times_s)} runs "
            f"(min {self.min_s * 1e3:.3f} ms, {self.num_warmup} warm-up, {self.device})"
        )


def benchmark(
    fn: Callable[[], Any],
    *,
    num_warmup: int = 3,
    num_runs: int = 10,
    device: torch.device | str | None = None,
) -> BenchmarkResult:
    """Time ``fn()``: ``num_warmup`` untimed calls, then ``num_runs`` timed calls; see the median.

    On CUDA each call is bracketed by CUDA events and the stream synchronised, so the time includes
    the kernels ``fn`` launched, not only the launch. On CPU ``time.perf_counter`` brackets the call.
    ``device`` defaults to ``get_device()``; pass ``"cpu"`` to time host-only work on a GPU machine.
    """
    if num_warmup < 0:
        raise ValueError(f"num_warmup must be >= 0, got {num_warmup}")
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    device = torch.device(device) if device is not None else get_device()
    for _ in range(num_warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(num_runs):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)  # elapsed_time is in ms
    else:
        for _ in range(num_runs):
            start_s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start_s)
    return BenchmarkResult(times_s=tuple(times), num_warmup=num_warmup, device=str(device))


def compute_sqnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    """SQNR of ``test`` against ``ref`` in dB (higher is better; ``inf`` when they are equal).

    Computed in float64 so that the metric itself adds no rounding worth mentioning. A zero
    reference with a non-zero test gives ``-inf``. Shapes must match exactly (no broadcasting).
    """
    if ref.shape != test.shape:
        raise ValueError(f"compute_sqnr needs equal shapes, got {tuple(ref.shape)} and {tuple(test.shape)}")
    ref64 = ref.detach().to(torch.float64)
    test64 = test.detach().to(torch.float64)
    if not (torch.isfinite(ref64).all() and torch.isfinite(test64).all()):
        raise ValueError("compute_sqnr got non-finite values (inf/nan); check the inputs first")
    signal = torch.linalg.vector_norm(ref64).item()
    noise = torch.linalg.vector_norm(ref64 - test64).item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 20.0 * math.log10(signal / noise)
