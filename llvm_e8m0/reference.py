"""Independent reference: float32 -> e8m0 (OCP MX v1.0, section 5.4.1), in exact arithmetic.

The OCP Microscaling Formats spec defines E8M0 as an unsigned 8-bit exponent with bias 127: the
encodings 0x00..0xFE are the values 2^-127 .. 2^127, 0xFF is NaN; there is no sign, no zero, no
infinity and no subnormal. The spec does not define a float32 -> E8M0 rounding, so this reference
applies IEEE 754's rounding attributes to that value set, and documents each choice:

* value set: {2^e : -127 <= e <= 127}. A positive finite x is rounded to it per ``mode``:
  ``NearestTiesToEven`` / ``NearestTiesToAway`` / ``TowardZero`` / ``TowardPositive`` /
  ``TowardNegative`` (for positive x, TowardNegative = TowardZero).
* ties (x = 1.5 * 2^e, the midpoint of 2^e and 2^(e+1)): ``NearestTiesToEven`` picks the candidate
  whose ENCODING (biased exponent, the only digit the format stores) is even;
  ``NearestTiesToAway`` picks 2^(e+1). (IEEE's "even" is the last significand digit; E8M0's
  significand is a single implicit 1, odd for both candidates, so the encoding is the only digit
  left to be even. LLVM reads "even" differently; see README.md.)
* overflow (x > 2^127): as IEEE (round as if the exponent range were unbounded, overflow if the
  result exceeds 2^127): NearestTiesToAway overflows for x >= 1.5 * 2^127, NearestTiesToEven for
  x > 1.5 * 2^127 (the tie goes to 2^127, whose encoding 0xFE is even), TowardPositive for any
  x > 2^127; E8M0 has no infinity, so an overflow gives NaN (0xFF). TowardZero / TowardNegative
  saturate to 2^127 (0xFE).
* underflow (0 < x < 2^-127) and zero (+0.0 and -0.0): E8M0 has no zero, so the nearest
  representable value 2^-127 (0x00) in every mode (no value exists below it to round toward).
* NaN and +-infinity: NaN (0xFF), the only non-finite encoding.
* negative x (not -0.0): not representable by an unsigned format: NaN (0xFF), as IEEE's invalid
  operation.

``to_e8m0`` is the scalar pure-Python statement of these rules (``fractions.Fraction``);
``to_e8m0_numpy`` is a vectorized port used by the sweeps, checked against the scalar one.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

MODES = ("NearestTiesToEven", "NearestTiesToAway", "TowardZero", "TowardPositive", "TowardNegative")
E8M0_NAN = 0xFF
E8M0_BIAS = 127
E8M0_MIN_EXP = -127
E8M0_MAX_EXP = 127


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a rounding mode; use one of {MODES}")


def f32_bits_to_fraction(bits: int) -> Fraction | None:
    """Exact value of a finite float32 bit pattern (None for inf/NaN)."""
    sign, exponent_field, mantissa = bits >> 31, (bits >> 23) & 0xFF, bits & 0x7FFFFF
    if exponent_field == 0xFF:
        return None
    if exponent_field == 0:
        magnitude = Fraction(mantissa, 2**149)
    else:
        magnitude = Fraction((1 << 23) | mantissa, 2**23) * Fraction(2) ** (exponent_field - 127)
    return -magnitude if sign else magnitude


def _floor_log2(x: Fraction) -> int:
    """floor(log2(x)) for x > 0, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    # Now 2^(e-1) < x < 2^(e+1); settle which side of 2^e it is on.
    if Fraction(2) ** e > x:
        e -= 1
    return e


def to_e8m0(bits: int, mode: str = "NearestTiesToEven") -> int:
    """The e8m0 encoding of float32 ``bits`` (a Python int in [0, 2^32)) under ``mode``."""
    _check_mode(mode)
    if not 0 <= bits < 2**32:
        raise ValueError(f"bits={bits} is not a 32-bit pattern; pass an int in [0, 2**32)")
    x = f32_bits_to_fraction(bits)
    if x is None:
        return E8M0_NAN
    if x == 0:
        return 0x00
    if x < 0:
        return E8M0_NAN
    e = _floor_log2(x)
    if e < E8M0_MIN_EXP:
        return 0x00
    lower = Fraction(2) ** e
    if x == lower:
        return e + E8M0_BIAS  # exact (e <= 127 always holds for float32)
    midpoint = lower * Fraction(3, 2)
    if mode in ("TowardZero", "TowardNegative"):
        round_up = False
    elif mode == "TowardPositive":
        round_up = True
    elif x != midpoint:
        round_up = x > midpoint
    elif mode == "NearestTiesToAway":
        round_up = True
    else:  # NearestTiesToEven: the candidate with the even encoding
        round_up = (e + E8M0_BIAS) % 2 == 1
    result = e + E8M0_BIAS + int(round_up)
    # e + 1 = 128 is not representable: that is the overflow, encoded as NaN (0xFF = 128 + 127).
    return min(result, E8M0_NAN)


def to_e8m0_numpy(bits: np.ndarray, mode: str = "NearestTiesToEven") -> np.ndarray:
    """Vectorized ``to_e8m0`` over a uint32 array of float32 bit patterns."""
    _check_mode(mode)
    bits = np.asarray(bits, dtype=np.uint32)
    sign = (bits >> 31).astype(bool)
    exponent_field = ((bits >> 23) & 0xFF).astype(np.int32)
    mantissa = (bits & 0x7FFFFF).astype(np.int64)
    # Normalise subnormals: value = 1.fraction * 2^k with a 23-bit fraction, for every finite
    # non-zero input (for a subnormal, k = bit_length(mantissa) - 150).
    subnormal = (exponent_field == 0) & (mantissa != 0)
    bit_length = np.zeros(bits.shape, dtype=np.int64)
    if subnormal.any():
        # frexp's exponent of an integer is its bit length, exactly (float64 holds 23-bit ints).
        bit_length[subnormal] = np.frexp(mantissa[subnormal].astype(np.float64))[1]
    k = np.where(subnormal, bit_length - 150, exponent_field - 127)
    fraction = np.where(subnormal, (mantissa << np.clip(24 - bit_length, 0, 23)) & 0x7FFFFF, mantissa)
    half = 1 << 22
    if mode in ("TowardZero", "TowardNegative"):
        round_up = np.zeros(bits.shape, dtype=bool)
    elif mode == "TowardPositive":
        round_up = fraction != 0
    elif mode == "NearestTiesToAway":
        round_up = fraction >= half
    else:
        lower_code_is_odd = ((k + E8M0_BIAS) % 2) == 1
        round_up = (fraction > half) | ((fraction == half) & lower_code_is_odd)
    result = np.minimum(k + E8M0_BIAS + round_up, E8M0_NAN)
    result = np.where(k < E8M0_MIN_EXP, 0x00, result)
    is_zero = (exponent_field == 0) & (mantissa == 0)
    result = np.where(is_zero, 0x00, result)
    result = np.where(sign & ~is_zero, E8M0_NAN, result)
    result = np.where(exponent_field == 0xFF, E8M0_NAN, result)
    return result.astype(np.uint8)
