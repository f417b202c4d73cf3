"""Every float32 -> e8m0 converter behind one signature: ``fn(bits uint32[N]) -> uint8[N]``.

``bits`` are float32 bit patterns (``np.float32`` arrays viewed as ``np.uint32``); the result is the
e8m0 encoding (0x00..0xFE = 2^-127..2^127, 0xFF = NaN). ``IMPLEMENTATIONS`` is the registry the
sweep and the tests iterate over; names are stable (they appear in the results files).

torchao isolation: ``torchao.prototype.mx_formats.mx_tensor.to_mx`` computes the block scale of
``max_abs`` and subtracts the element dtype's largest power of two (``F8E4M3_MAX_POW2 = 8`` for
float8_e4m3fn; RCEIL divides by ``F8E4M3_MAX = 448``). To see the scale ROUNDING alone, the
``torchao_*`` converters call the real ``to_mx`` (one block of size 1 per input, so
``max_abs = |x|``) with those two module constants patched to ``0`` and ``1.0`` for the duration of
the call: the offset becomes 2^0, the division a no-op, and everything else (the mode's rounding,
clamps, NaN handling, the element-mantissa width that EVEN rounds to) is torchao's code unchanged.
``torchao_with_real_offset`` runs the unpatched ``to_mx`` for the test that checks that the
patch removes exactly the offset.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from llvm_e8m0 import llvm_lib, reference

Converter = Callable[[np.ndarray], np.ndarray]

LLVM_MODE_SHORT_NAMES = {
    "rne": "NearestTiesToEven",
    "rna": "NearestTiesToAway",
    "rtz": "TowardZero",
    "rtp": "TowardPositive",
    "rtn": "TowardNegative",
}
TORCHAO_MODES = ("floor", "ceil", "even", "rceil")


def _as_bits(bits: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(bits)
    if bits.dtype != np.uint32:
        raise ValueError(f"expected float32 bit patterns as a uint32 array, got dtype {bits.dtype}")
    return bits


def make_llvm(mode: str, num_threads: int | None = None) -> Converter:
    def convert(bits: np.ndarray) -> np.ndarray:
        out, _status = llvm_lib.convert(_as_bits(bits), mode, num_threads=num_threads)
        return out

    return convert


def torch_cast(bits: np.ndarray) -> np.ndarray:
    """``torch.Tensor.to(torch.float8_e8m0fnu)`` (c10 fp8e8m0fnu_from_fp32_value on CPU)."""
    x = torch.from_numpy(_as_bits(bits)).view(torch.float32)
    return x.to(torch.float8_e8m0fnu).view(torch.uint8).numpy()


def ml_dtypes_cast(bits: np.ndarray) -> np.ndarray:
    """``np.ndarray.astype(ml_dtypes.float8_e8m0fnu)`` (ml_dtypes ConvertImpl<float, e8m0>)."""
    import ml_dtypes

    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> NaN is what we measure
        return _as_bits(bits).view(np.float32).astype(ml_dtypes.float8_e8m0fnu).view(np.uint8)


@contextlib.contextmanager
def torchao_scale_only() -> Iterator[None]:
    """Patch torchao's e4m3 offset constants so to_mx returns the scale of max_abs itself."""
    from unittest import mock

    from torchao.prototype.mx_formats import mx_tensor

    with (
        mock.patch.object(mx_tensor, "F8E4M3_MAX_POW2", 0),
        mock.patch.object(mx_tensor, "F8E4M3_MAX", 1.0),
    ):
        yield


def _torchao_to_mx(bits: np.ndarray, mode: str) -> np.ndarray:
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.mx_tensor import to_mx

    x = torch.from_numpy(_as_bits(bits)).view(torch.float32).reshape(-1, 1)  # one block per value
    scale, _data_lp = to_mx(x, torch.float8_e4m3fn, 1, ScaleCalculationMode(mode))
    return scale.view(torch.uint8).reshape(-1).numpy()


def make_torchao(mode: str) -> Converter:
    if mode not in TORCHAO_MODES:
        raise ValueError(f"torchao mode={mode!r}; use one of {TORCHAO_MODES}")

    def convert(bits: np.ndarray) -> np.ndarray:
        with torchao_scale_only():
            return _torchao_to_mx(bits, mode)

    return convert


def torchao_with_real_offset(bits: np.ndarray, mode: str) -> np.ndarray:
    """The unpatched to_mx scale for element dtype float8_e4m3fn (offset 2^8 / max 448)."""
    return _torchao_to_mx(bits, mode)


def make_reference(mode: str) -> Converter:
    def convert(bits: np.ndarray) -> np.ndarray:
        return reference.to_e8m0_numpy(_as_bits(bits), mode)

    return convert


def build_registry(llvm_threads: int | None = None) -> dict[str, Converter]:
    """name -> converter, in the order the results tables list them."""
    registry: dict[str, Converter] = {}
    for short, mode in LLVM_MODE_SHORT_NAMES.items():
        registry[f"llvm_{short}"] = make_llvm(mode, llvm_threads)
    registry["torch"] = torch_cast
    registry["ml_dtypes"] = ml_dtypes_cast
    for mode in TORCHAO_MODES:
        registry[f"torchao_{mode}"] = make_torchao(mode)
    for short, mode in LLVM_MODE_SHORT_NAMES.items():
        registry[f"ref_{short}"] = make_reference(mode)
    return registry


IMPLEMENTATION_NAMES = tuple(build_registry())
