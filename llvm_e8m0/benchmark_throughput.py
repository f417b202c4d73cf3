"""Per-converter float32 -> e8m0 throughput on one chunk, and the extrapolated full 2^32 sweep time.

Times each converter (single-threaded, as inside one sweep worker) on ``chunk_size`` uniformly
random float32 bit patterns with ``pytorch_scripts_common.benchmark`` (median after warm-up), plus
the sweep's own per-chunk work (documented-behaviour checks and pairwise counting), and prints a
table with the ratio against ``torch`` measured in the same run. The full-sweep time is
EXTRAPOLATED: 2^32 x (sum of per-value costs) / num_workers, assuming the workers scale linearly.
"""

from __future__ import annotations

import os

import numpy as np

from pytorch_scripts_common.cli import UsageError, run

MAX_CHUNK_SIZE = 2**28  # 1 GiB of inputs, plus one output byte per value per converter


def main(
    chunk_size: int = 2**22, num_runs: int = 3, num_warmup: int = 1, num_workers: int = 2, seed: int = 0
) -> None:
    """Print per-converter throughput (M values/s) and an extrapolated full-sweep time.

    Args:
        chunk_size: float32 bit patterns per timed call, at most 2^28 (the sweep's default chunk is 2^22).
        num_runs: timed calls per converter (the median is reported).
        num_warmup: untimed calls per converter before timing.
        num_workers: sweep worker processes assumed by the extrapolation.
        seed: seed of the random bit patterns.
    """
    import torch

    from llvm_e8m0 import llvm_lib, sweep
    from llvm_e8m0.implementations import build_registry
    from pytorch_scripts_common import benchmark, set_seed

    for flag, value, low, high in (
        ("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE),
        ("num_runs", num_runs, 1, None),
        ("num_warmup", num_warmup, 0, None),
        ("num_workers", num_workers, 1, None),
        ("seed", seed, 0, None),
    ):
        if value < low or (high is not None and value > high):
            allowed = f"{low} to {high}" if high is not None else f"an integer >= {low}"
            raise UsageError(f"--{flag} is {value}: pass {allowed}")
    set_seed(seed)
    torch.set_num_threads(1)
    bits = np.sort(
        np.random.default_rng(seed).integers(0, 2**32, size=chunk_size, dtype=np.uint64).astype(np.uint32)
    )
    registry = build_registry(llvm_threads=1)
    seconds: dict[str, float] = {}
    for name, converter in registry.items():
        result = benchmark(
            lambda c=converter: c(bits), num_warmup=num_warmup, num_runs=num_runs, device="cpu"
        )
        seconds[name] = result.median_s
    names = tuple(registry)
    sweep._init_worker(1, 1, names)
    overhead = benchmark(
        lambda: sweep.process_chunk(0, bits, names, 2000, check_all_reference=False),
        num_warmup=0,
        num_runs=1,
        device="cpu",
    ).median_s - sum(seconds.values())  # process_chunk = converters + checks + pairwise counting
    seconds["(sweep checks + pairwise counting)"] = max(overhead, 0.0)

    baseline = seconds["torch"]
    print(
        f"float32 -> e8m0 throughput, {chunk_size:,} random bit patterns per call, 1 thread, median of "
        f"{num_runs} runs after {num_warmup} warm-up; torch {torch.__version__}, "
        f"LLVM {llvm_lib.llvm_version()}, {os.cpu_count()} CPUs, "
        f"1-minute load average {os.getloadavg()[0]:.2f} before timing"
    )
    extrapolated = f"extrapolated 2^32 s ({num_workers} workers)"
    print(f"| stage | median s / chunk | M values/s | time vs torch | {extrapolated} |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, s in seconds.items():
        rate = chunk_size / s / 1e6 if s else float("inf")
        full = s * (sweep.FULL_SWEEP_SIZE / chunk_size) / num_workers
        print(f"| {name} | {s:.4f} | {rate:.1f} | {s / baseline:.1f}x | {full:.0f} |")
    total = sum(seconds.values()) * (sweep.FULL_SWEEP_SIZE / chunk_size) / num_workers
    print(f"| TOTAL (extrapolated full sweep) | | | | {total:.0f} s = {total / 60:.1f} min |")


if __name__ == "__main__":
    run(main)
