"""Every converter on hand-written inputs (ties, subnormals, overflow, inf/NaN), and the torchao patch."""

import math
import struct

import numpy as np
import pytest
import torch

from llvm_e8m0 import reference
from llvm_e8m0.expected import build_expected
from llvm_e8m0.implementations import (
    IMPLEMENTATION_NAMES,
    build_registry,
    torchao_scale_only,
    torchao_with_real_offset,
)

MAX_F32 = 3.4028234663852886e38
INPUTS = [
    0.0,
    -0.0,
    1.0,
    1.5,  # tie between 2^0 (code 0x7f, odd) and 2^1 (0x80, even)
    3.0,  # tie between 2^1 (0x80, even) and 2^2 (0x81, odd)
    6.0,  # tie between 2^2 (0x81, odd) and 2^3
    2.0**-127,  # float32 subnormal equal to the smallest e8m0 value
    1.25 * 2.0**-127,  # subnormal, nearer to 2^-127 than to 2^-126
    1.5 * 2.0**-127,  # subnormal tie between 2^-127 (0x00, even) and 2^-126
    2.0**-128,  # below the e8m0 range
    1e-45,  # smallest float32 subnormal
    2.0**127,  # largest e8m0 value
    1.25 * 2.0**127,
    1.5 * 2.0**127,  # tie between 2^127 and the unrepresentable 2^128: overflow
    MAX_F32,
    math.inf,
    -math.inf,
    math.nan,
    -1.0,
    1.9375,  # torchao EVEN's round-up threshold for float8_e4m3fn (mbits=3)
    2.0**100 * (1 + 2.0**-23),  # just above a power of two: RCEIL's float32 log2 collapses
]
# Expected e8m0 bits per converter (hex, one per INPUTS entry), written by hand from each library's
# code (README.md "Documented behaviour"). Columns: 0.0 -0.0 1.0 1.5 3.0 6.0 | 2^-127 1.25s 1.5s 2^-128
# 1e-45 | 2^127 1.25M 1.5M max | inf -inf nan -1.0 | 1.9375 2^100+.
EXPECTED_HEX = {
    "llvm_rne": "00 00 7F 80 81 82 00 00 01 00 00 FE FE FF FF FF FF FF FF 80 E3",
    "llvm_rna": "00 00 7F 80 81 82 00 00 01 00 00 FE FE FF FF FF FF FF FF 80 E3",
    "llvm_rtz": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FE FF FF FF FF 7F E3",
    "llvm_rtp": "00 00 7F 80 81 82 00 01 01 00 00 FE FF FF FF FF FF FF FF 80 E4",
    "llvm_rtn": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FE FF FF FF FF 7F E3",
    "torch": "00 00 7F 80 81 82 00 01 01 00 00 FE FE FF FF FF FF FF 7F 80 E3",
    "ml_dtypes": "FF FF 7F 80 81 82 00 01 01 00 00 FE FE FF FF FF FF FF FF 80 E3",
    "torchao_floor": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FE FF FF FF 7F 7F E3",
    "torchao_ceil": "00 00 7F 80 81 82 01 01 01 01 01 FE FF FF FF FF FF FF 7F 80 E4",
    "torchao_even": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FF FF FF FF 7F 80 E3",
    "torchao_rceil": "00 00 7F 80 81 82 00 01 01 00 00 FE FE FE FE FE FE FF 7F 80 E3",
    "ref_rne": "00 00 7F 80 80 82 00 00 00 00 00 FE FE FE FF FF FF FF FF 80 E3",
    "ref_rna": "00 00 7F 80 81 82 00 00 01 00 00 FE FE FF FF FF FF FF FF 80 E3",
    "ref_rtz": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FE FF FF FF FF 7F E3",
    "ref_rtp": "00 00 7F 80 81 82 00 01 01 00 00 FE FF FF FF FF FF FF FF 80 E4",
    "ref_rtn": "00 00 7F 7F 80 81 00 00 00 00 00 FE FE FE FE FF FF FF FF 7F E3",
}
EXPECTED = {name: list(bytes.fromhex(row)) for name, row in EXPECTED_HEX.items()}


def input_bits() -> np.ndarray:
    return np.array([struct.unpack("<I", struct.pack("<f", v))[0] for v in INPUTS], dtype=np.uint32)


@pytest.fixture(scope="module")
def registry(apfloat_library):
    return build_registry()


def test_every_converter_has_hand_written_expectations():
    assert set(EXPECTED) == set(IMPLEMENTATION_NAMES)
    assert all(len(row) == len(INPUTS) for row in EXPECTED.values())


@pytest.mark.parametrize("name", IMPLEMENTATION_NAMES)
def test_hand_written_bits(registry, name):
    out = registry[name](input_bits())
    assert out.dtype == np.uint8
    got = [f"0x{int(v):02X}" for v in out]
    want = [f"0x{v:02X}" for v in EXPECTED[name]]
    assert got == want, [(INPUTS[i], g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]


@pytest.mark.parametrize("name", IMPLEMENTATION_NAMES)
def test_documented_model_agrees_with_hand_written_bits(name):
    """The sweep's expectation rules (expected.py) say the same as this hand-written table."""
    expectation = build_expected()[name](input_bits())
    assert expectation.matches(np.array(EXPECTED[name], dtype=np.uint8)).all()
    if name == "torchao_rceil":  # 2^100 * (1 + 2^-23): exact ceil is 2^101, float32 log2 gives 2^100
        assert expectation.expected[-1] == 0xE3 and expectation.deviation_mask[-1]
        assert not expectation.matches(np.array([0xE4], dtype=np.uint8))[0]  # exact, no tolerance
        assert expectation.deviation_mask.sum() == 1


def test_converters_reject_non_uint32(registry):
    with pytest.raises(ValueError, match="uint32"):
        registry["torch"](np.zeros(3, dtype=np.float32))


def test_torchao_patch_removes_exactly_the_element_offset(registry):
    """Unpatched to_mx (float8_e4m3fn: offset 2^8) == patched scale - 8 where nothing clamps."""
    rng = np.random.default_rng(0)
    exponents = rng.integers(16, 250, size=4096).astype(np.uint32)
    bits = (exponents << 23) | rng.integers(0, 1 << 23, size=4096).astype(np.uint32)
    for mode in ("floor", "ceil", "even"):
        patched = registry[f"torchao_{mode}"](bits).astype(np.int32)
        real = torchao_with_real_offset(bits, mode).astype(np.int32)
        np.testing.assert_array_equal(real, patched - 8, err_msg=mode)
    # RCEIL divides by max_pos = 448 instead of subtracting a power of two: the unpatched scale of x
    # is the patched (max_pos = 1) scale of float32(x / 448).
    descale = (torch.from_numpy(bits).view(torch.float32) / 448.0).view(torch.uint32).numpy()
    np.testing.assert_array_equal(torchao_with_real_offset(bits, "rceil"), registry["torchao_rceil"](descale))


def test_torchao_patch_is_undone_after_the_call(registry):
    from torchao.prototype.mx_formats import mx_tensor

    before = (mx_tensor.F8E4M3_MAX_POW2, mx_tensor.F8E4M3_MAX)
    with torchao_scale_only():
        assert (mx_tensor.F8E4M3_MAX_POW2, mx_tensor.F8E4M3_MAX) == (0, 1.0)
    assert (mx_tensor.F8E4M3_MAX_POW2, mx_tensor.F8E4M3_MAX) == before == (8, 448.0)


def test_reference_scalar_and_numpy_agree():
    from llvm_e8m0.sweep import structured_inputs

    rng = np.random.default_rng(1)
    bits = np.concatenate(
        [structured_inputs(), rng.integers(0, 2**32, size=3000, dtype=np.uint64).astype(np.uint32)]
    )
    for mode in reference.MODES:
        vectorized = reference.to_e8m0_numpy(bits, mode)
        scalar = np.array([reference.to_e8m0(int(b), mode) for b in bits], dtype=np.uint8)
        np.testing.assert_array_equal(vectorized, scalar, err_msg=mode)


def test_reference_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rounding mode"):
        reference.to_e8m0(0, "nearest")
    with pytest.raises(ValueError, match="32-bit"):
        reference.to_e8m0(2**32)
