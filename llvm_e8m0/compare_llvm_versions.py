"""Does another LLVM give the same e8m0 bits and status flags as the default one?

Builds ``apfloat_e8m0.cpp`` against a second LLVM (``llvm_dir``, or Debian's ``llvm-<N>-dev``
fetched with ``fetch_debian=N``) and compares it with the default build (LLVM_CONFIG / LLVM_DIR /
PyPI mlc-llvm-static) on the 256 decodes and on the fast sweep's inputs in all five rounding modes.
Exits non-zero if anything differs (the README's LLVM findings would then be version-specific).
"""

from __future__ import annotations

import numpy as np

from pytorch_scripts_common.cli import UsageError, run


def main(llvm_dir: str = "", fetch_debian: int = 0, num_random: int = 1_000_000, seed: int = 0) -> None:
    """Compare the default LLVM's APFloat e8m0 conversions with a second LLVM's, bit for bit.

    Args:
        llvm_dir: prefix of the second LLVM (include/, lib/libLLVMSupport.a, optional bin/llvm-config).
        fetch_debian: instead of llvm_dir, download Debian's llvm-<N>-dev (e.g. 22) into the cache.
        num_random: random float32 bit patterns added to the structured special values (<= 2^27).
        seed: seed of the random patterns.
    """
    from llvm_e8m0 import build, llvm_lib, sweep

    if bool(llvm_dir) == bool(fetch_debian):
        raise UsageError(f"--llvm_dir {llvm_dir!r}, --fetch_debian {fetch_debian}: give exactly one of them")
    if not 0 <= num_random <= sweep.MAX_NUM_RANDOM:
        raise UsageError(f"--num_random is {num_random}: pass 0 to {sweep.MAX_NUM_RANDOM} (2^27)")
    if seed < 0:
        raise UsageError(f"--seed is {seed}: pass a non-negative integer")
    other_dir = llvm_dir or str(build.fetch_debian_llvm(fetch_debian))
    default_path = str(build.build_library())
    other_path = str(build.build_library(llvm_dir=other_dir))
    versions = (llvm_lib.llvm_version(default_path), llvm_lib.llvm_version(other_path))
    structured, random_bits = sweep.fast_inputs(num_random, seed)
    bits = sweep.sorted_unique(np.concatenate([structured, random_bits]))
    print(f"LLVM {versions[0]} ({default_path}) vs LLVM {versions[1]} ({other_path}), {bits.size:,} inputs")
    print("| what | differing e8m0 bits | differing status |")
    print("| --- | ---: | ---: |")
    decoded = [llvm_lib.decode_all(path) for path in (default_path, other_path)]
    differences = int((decoded[0][0] != decoded[1][0]).sum()), int((decoded[0][1] != decoded[1][1]).sum())
    print(f"| decode 256 codes | {differences[0]} | {differences[1]} |")
    total = sum(differences)
    for mode in llvm_lib.ROUNDING_MODES:
        out_a, status_a = llvm_lib.convert(bits, mode, library_path=default_path)
        out_b, status_b = llvm_lib.convert(bits, mode, library_path=other_path)
        bit_diff, status_diff = int((out_a != out_b).sum()), int((status_a != status_b).sum())
        total += bit_diff + status_diff
        print(f"| {mode} | {bit_diff} | {status_diff} |")
    if total:
        raise SystemExit(f"LLVM {versions[0]} and {versions[1]} differ on {total} results (see table)")
    print(f"identical: LLVM {versions[0]} and {versions[1]} agree on every decode, bit and status")


if __name__ == "__main__":
    run(main)
