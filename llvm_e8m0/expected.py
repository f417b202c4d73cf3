"""Each converter's documented behaviour (README.md "Documented behaviour"), as vectorized rules.

``EXPECTED[name](bits) -> Expectation`` gives, for float32 bit patterns, the e8m0 bits the
converter ``name`` of ``implementations.py`` must return. The sweep fails (non-zero exit) on any
input where a converter's output differs from its expectation, so these rules are the claims the
README makes about each library, checked on every input the sweep sees.

Notation: ``E`` = float32 exponent field, ``M`` = mantissa field, and for finite non-zero inputs
``|x| = 1.f * 2^k`` with ``f`` the 23-bit fraction after normalising subnormals. "half up" means
round the magnitude up when ``f >= 0.5`` (ties away from zero).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from llvm_e8m0 import reference

HALF = 1 << 22
NAN = 0xFF


@dataclasses.dataclass
class Expectation:
    """The exact ``expected`` bits, and where they deviate from the mode's exact-arithmetic result.

    ``deviation_mask`` marks inputs where the documented behaviour is NOT the mathematically exact
    rounding the mode names (torchao RCEIL's float32 ``log2``): still an exact expectation, but the
    sweep counts these inputs separately so the size of the effect is reported.
    """

    expected: np.ndarray
    deviation_mask: np.ndarray | None = None

    def matches(self, actual: np.ndarray) -> np.ndarray:
        return actual == self.expected


@dataclasses.dataclass
class Fields:
    sign: np.ndarray  # bool
    exponent_field: np.ndarray  # int32, 0..255
    mantissa: np.ndarray  # int32, 0..2^23-1
    k: np.ndarray  # int32: floor(log2|x|) for finite non-zero x (garbage elsewhere)
    fraction: np.ndarray  # int32: 23-bit fraction of |x| / 2^k (subnormals normalised)
    is_zero: np.ndarray
    is_nonfinite: np.ndarray  # inf or NaN
    is_nan: np.ndarray
    is_inf: np.ndarray


def decompose(bits: np.ndarray) -> Fields:
    bits = np.asarray(bits, dtype=np.uint32)
    exponent_field = ((bits >> 23) & 0xFF).astype(np.int32)
    mantissa = (bits & 0x7FFFFF).astype(np.int32)
    k = exponent_field - 127
    fraction = mantissa.copy()
    subnormal = (exponent_field == 0) & (mantissa != 0)
    if subnormal.any():
        bit_length = np.frexp(mantissa[subnormal].astype(np.float64))[1].astype(np.int32)
        k[subnormal] = bit_length - 150
        fraction[subnormal] = (mantissa[subnormal] << (24 - bit_length)) & 0x7FFFFF
    is_nonfinite = exponent_field == 0xFF
    return Fields(
        sign=(bits >> 31).astype(bool),
        exponent_field=exponent_field,
        mantissa=mantissa,
        k=k,
        fraction=fraction,
        is_zero=(exponent_field == 0) & (mantissa == 0),
        is_nonfinite=is_nonfinite,
        is_nan=is_nonfinite & (mantissa != 0),
        is_inf=is_nonfinite & (mantissa == 0),
    )


# Magnitude rounding rules: does |x| = 1.f * 2^k round up to 2^(k+1)?
def _round_up(fields: Fields, rule: str) -> np.ndarray:
    if rule == "half_up":
        return fields.fraction >= HALF
    if rule == "down":
        return np.zeros(fields.fraction.shape, dtype=bool)
    if rule == "up":
        return fields.fraction != 0
    raise AssertionError(rule)


# --- LLVM APFloat ----------------------------------------------------------------------------
# Positive x: rounded on the magnitude; NearestTiesToEven's tie test reads the significand's last
# bit, which is the implicit 1 for every normal, so ties always round up ("half up").
_LLVM_POSITIVE_RULE = {"rne": "half_up", "rna": "half_up", "rtz": "down", "rtp": "up", "rtn": "down"}
# Negative x: APFloat rounds the signed value, so TowardPositive shrinks the magnitude and
# TowardNegative grows it.
_LLVM_NEGATIVE_RULE = {"rne": "half_up", "rna": "half_up", "rtz": "down", "rtp": "down", "rtn": "up"}


def llvm_guarded(fields: Fields, short_mode: str) -> np.ndarray:
    """Inputs apfloat_e8m0.cpp does not give to APFloat (would reach makeNaN(Negative=true))."""
    magnitude_can_grow = short_mode in ("rne", "rna", "rtn")
    above_max = (fields.exponent_field == 0xFE) & (fields.mantissa != 0)
    return fields.sign & (fields.is_nonfinite | (above_max & magnitude_can_grow))


def llvm_expected(bits: np.ndarray, short_mode: str, fields: Fields | None = None) -> Expectation:
    f = fields or decompose(bits)
    finite_nonzero = ~f.is_zero & ~f.is_nonfinite
    positive_code = np.minimum(f.k + 127 + _round_up(f, _LLVM_POSITIVE_RULE[short_mode]), NAN)
    negative_code = np.minimum(f.k + 127 + _round_up(f, _LLVM_NEGATIVE_RULE[short_mode]), NAN)
    # Below 2^-127 APFloat rounds on the grid {0, 2^-127}; "0" becomes +2^-127 (no zero:
    # makeSmallestNormalized(false)) and a rounded-up negative keeps its sign bit (0x80).
    tiny = f.k < -127
    if short_mode == "rtn":
        negative_tiny_up = np.ones(f.k.shape, dtype=bool)
    elif short_mode == "rna":
        negative_tiny_up = f.k == -128
    elif short_mode == "rne":
        negative_tiny_up = (f.k == -128) & (f.fraction != 0)  # the tie 2^-128 goes to "even" zero
    else:
        negative_tiny_up = np.zeros(f.k.shape, dtype=bool)
    negative_result = np.where(tiny, np.where(negative_tiny_up, 0x80, 0x00), negative_code | 0x80)
    positive_result = np.where(tiny, 0x00, positive_code)
    result = np.where(f.sign, negative_result, positive_result)
    result = np.where(finite_nonzero, result, 0x00)  # +-0 -> 2^-127 (0x00)
    result = np.where(f.is_nonfinite, NAN, result)  # +inf -> NaN (opInexact), NaN -> NaN
    result = np.where(llvm_guarded(f, short_mode), NAN, result)
    return Expectation(result.astype(np.uint8))


# --- torch (c10::detail::fp8e8m0fnu_from_fp32_value) -------------------------------------------
def torch_expected(bits: np.ndarray, fields: Fields | None = None) -> Expectation:
    f = fields or decompose(bits)
    # Works on the exponent field of |x| (the sign bit is dropped by the `& 0xFF` mask) with
    # guard/round/sticky bits; the "lsb" is 1 for normals, 0 for subnormals.
    guard = (f.mantissa & 0x400000) != 0
    round_or_sticky = (f.mantissa & 0x3FFFFF) != 0
    lsb = f.exponent_field > 0
    code = f.exponent_field + (guard & (round_or_sticky | lsb))
    return Expectation(np.where(f.is_nonfinite, NAN, code).astype(np.uint8))


# --- ml_dtypes (float8_internal::ConvertImpl<float, float8_e8m0fnu>, kSaturate=false) -----------
def ml_dtypes_expected(bits: np.ndarray, fields: Fields | None = None) -> Expectation:
    f = fields or decompose(bits)
    normal_code = np.minimum(f.exponent_field + (f.mantissa >= HALF), NAN)
    subnormal_code = (f.mantissa > HALF).astype(np.int32)  # grid {0, 2^-126}, tie 2^-127 to even 0
    code = np.where(f.exponent_field == 0, subnormal_code, normal_code)
    code = np.where(f.sign | f.is_zero | f.is_nonfinite, NAN, code)
    return Expectation(code.astype(np.uint8))


# --- torchao to_mx, offset patched to 2^0 (implementations.torchao_scale_only) -----------------
def torchao_expected(bits: np.ndarray, mode: str, fields: Fields | None = None) -> Expectation:
    f = fields or decompose(bits)
    abs_bits = (np.asarray(bits, dtype=np.uint32) & np.uint32(0x7FFFFFFF)).astype(np.int64)
    deviation_mask = None
    if mode == "floor":
        code = f.exponent_field
    elif mode == "ceil":
        code = np.minimum(f.exponent_field + (f.mantissa > 0), NAN)
    elif mode == "even":
        # max_abs + 2^(23 - mbits - 1) with mbits = 3 (float8_e4m3fn), then keep sign+exponent.
        code = np.minimum((abs_bits + (1 << 19)) >> 23, NAN).astype(np.int32)
        code = np.where(f.is_nonfinite, NAN, code)
    elif mode == "rceil":
        # _to_mx_rceil: clamp(ceil(log2(max_abs)), -127, 127) with torch.log2 in float32. Modelled
        # as ceil of log2(|x|) rounded to the nearest float32 (float64 log2, then one rounding):
        # torch's CPU log2 is not correctly rounded everywhere (1 ulp off on 59,428 of 25 M inputs
        # near powers of two), but its ceil equals this model's on all 2^32 inputs (full sweep).
        # Just above 2^k (4 <= k <= 126, -127 <= k <= -5) log2(x) - k can be below half a float32
        # ulp of k, so log2 rounds to exactly k and ceil gives k: one below the exact ceil (e.g.
        # 2^100 * (1 + 2^-23) -> 2^100).
        magnitude = abs_bits.astype(np.uint32).view(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):  # log2(0) = -inf; inf/NaN masked below
            log2_f32 = np.log2(magnitude.astype(np.float64)).astype(np.float32)
        finite_nonzero = ~f.is_zero & ~f.is_nonfinite
        rounded = np.where(finite_nonzero, np.ceil(log2_f32), 0).astype(np.int32)
        code = np.clip(rounded, -127, 127) + 127
        code = np.where(f.is_zero, 0, code)  # log2(0) = -inf, clamped to -127
        code = np.where(f.is_inf, 254, code)
        code = np.where(f.is_nan, NAN, code)
        exact_ceil_code = np.clip(f.k + (f.fraction != 0), -127, 127) + 127
        deviation_mask = finite_nonzero & (code != exact_ceil_code)
    else:
        raise ValueError(f"torchao mode={mode!r}")
    return Expectation(code.astype(np.uint8), deviation_mask)


def reference_expected(bits: np.ndarray, short_mode: str, fields: Fields | None = None) -> Expectation:
    """The scalar pure-Python reference (slow: use on samples)."""
    from llvm_e8m0.implementations import LLVM_MODE_SHORT_NAMES

    mode = LLVM_MODE_SHORT_NAMES[short_mode]
    return Expectation(np.array([reference.to_e8m0(int(b), mode) for b in bits], dtype=np.uint8))


ExpectationFn = Callable[..., Expectation]  # (bits, fields: Fields | None = None) -> Expectation


def build_expected() -> dict[str, ExpectationFn]:
    """name -> expectation; pass ``fields=decompose(bits)`` to share the decomposition."""
    from llvm_e8m0.implementations import LLVM_MODE_SHORT_NAMES, TORCHAO_MODES

    registry: dict[str, ExpectationFn] = {}
    for short in LLVM_MODE_SHORT_NAMES:
        registry[f"llvm_{short}"] = lambda bits, fields=None, s=short: llvm_expected(bits, s, fields)
    registry["torch"] = torch_expected
    registry["ml_dtypes"] = ml_dtypes_expected
    for mode in TORCHAO_MODES:
        registry[f"torchao_{mode}"] = lambda bits, fields=None, m=mode: torchao_expected(bits, m, fields)
    for short in LLVM_MODE_SHORT_NAMES:
        registry[f"ref_{short}"] = lambda bits, fields=None, s=short: reference_expected(bits, s, fields)
    return registry


# Converters whose expectation is the slow scalar reference: checked on a sample only.
SAMPLED_EXPECTATIONS = frozenset(f"ref_{short}" for short in ("rne", "rna", "rtz", "rtp", "rtn"))
