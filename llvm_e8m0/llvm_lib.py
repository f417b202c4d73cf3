"""ctypes bindings of ``libapfloat_e8m0.so`` (llvm::APFloat float32 <-> Float8E8M0FNU).

``convert(bits, mode)`` returns the e8m0 byte and APFloat's status byte for every float32 bit
pattern; inputs that would reach undefined behaviour inside APFloat are not converted (status
``STATUS_GUARDED``, output ``0xFF``); see apfloat_e8m0.cpp and README.md "Negative inputs".
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from llvm_e8m0.build import build_library

# APFloat::opStatus bits (llvm/ADT/APFloat.h) and this library's guard bit.
STATUS_INVALID_OP = 0x01
STATUS_DIV_BY_ZERO = 0x02
STATUS_OVERFLOW = 0x04
STATUS_UNDERFLOW = 0x08
STATUS_INEXACT = 0x10
STATUS_GUARDED = 0x80

# Index = the `mode` argument of e8m0_convert_f32; names are llvm::RoundingMode's.
ROUNDING_MODES = ("NearestTiesToEven", "NearestTiesToAway", "TowardZero", "TowardPositive", "TowardNegative")


@functools.cache
def load_library(path: str | None = None) -> ctypes.CDLL:
    """Load the library at ``path``, default: build (once per source change, cached) and load it."""
    library = ctypes.CDLL(path or str(build_library(verbose=False)))
    library.e8m0_llvm_version.restype = ctypes.c_char_p
    library.e8m0_llvm_version.argtypes = []
    library.e8m0_decode_all.restype = ctypes.c_int
    library.e8m0_decode_all.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    library.e8m0_convert_f32.restype = ctypes.c_int
    library.e8m0_convert_f32.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_int,
    ]
    return library


def llvm_version(library_path: str | None = None) -> str:
    return load_library(library_path).e8m0_llvm_version().decode()


def decode_all(library_path: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 256 e8m0 codes decoded by APFloat: (float32 bits uint32[256], status uint8[256])."""
    f32_bits = np.zeros(256, dtype=np.uint32)
    status = np.zeros(256, dtype=np.uint8)
    rc = load_library(library_path).e8m0_decode_all(f32_bits.ctypes.data, status.ctypes.data)
    assert rc == 0, "APFloat reported an inexact e8m0 -> float32 conversion"
    return f32_bits, status


def default_num_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def convert(
    bits: np.ndarray, mode: str, num_threads: int | None = None, library_path: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """float32 bit patterns -> (e8m0 bits uint8, status uint8) with llvm::RoundingMode ``mode``.

    ``library_path`` selects another build (e.g. against a different LLVM); default: this source's.
    """
    if mode not in ROUNDING_MODES:
        raise ValueError(f"mode={mode!r} is not an llvm::RoundingMode; use one of {ROUNDING_MODES}")
    bits = np.ascontiguousarray(bits, dtype=np.uint32)
    out = np.empty(bits.shape, dtype=np.uint8)
    status = np.empty(bits.shape, dtype=np.uint8)
    threads = num_threads if num_threads is not None else default_num_threads()
    rc = load_library(library_path).e8m0_convert_f32(
        bits.ctypes.data, out.ctypes.data, status.ctypes.data, bits.size, ROUNDING_MODES.index(mode), threads
    )
    if rc != 0:
        raise ValueError(f"e8m0_convert_f32 rejected mode={mode!r} num_threads={threads}")
    return out, status
