// llvm::APFloat float32 <-> Float8E8M0FNU (OCP MX e8m0 scale) conversions, exported with a C ABI
// for ctypes (see llvm_e8m0/llvm_lib.py). Built by llvm_e8m0/build.py against a static LLVM.
//
// Status byte per converted value: APFloat's opStatus bits (opInvalidOp 0x01, opDivByZero 0x02,
// opOverflow 0x04, opUnderflow 0x08, opInexact 0x10) plus kStatusGuarded (0x80) when the input was
// NOT given to APFloat because it would reach undefined behaviour (see would_reach_signed_nan).
//
// Why the guard exists (LLVM 20-23 llvm/lib/Support/APFloat.cpp): Float8E8M0FNU has
// hasSignedRepr = false, and IEEEFloat::makeNaN(SNaN, Negative, fill) starts with
//   if (Negative && !semantics->hasSignedRepr) llvm_unreachable("... does not support signed values");
// In a build without assertions and with LLVM_UNREACHABLE_OPTIMIZE=1 (the released static LLVM
// used here; see llvm/Config/llvm-config.h) llvm_unreachable is __builtin_unreachable(): undefined
// behaviour, not an error. IEEEFloat::convert calls makeNaN(false, sign) for a negative NaN and a
// negative infinity, and IEEEFloat::handleOverflow calls it when a negative magnitude rounds past
// 2^127. Other negative inputs are converted without UB, but bitcastToAPInt() then ORs the sign into
// bit 7 of the e8m0 byte (convertIEEEFloatToAPInt<semFloat8E8M0FNU>), which is not a value.

#include "llvm/ADT/APFloat.h"
#include "llvm/ADT/APInt.h"
#include "llvm/Config/llvm-config.h"

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace {

constexpr uint8_t kStatusGuarded = 0x80;
constexpr uint8_t kGuardedOutput = 0xFF;  // e8m0 NaN: what the Python side reports for a guarded input

bool mode_from_int(int mode, llvm::RoundingMode *rm) {
  switch (mode) {
  case 0: *rm = llvm::RoundingMode::NearestTiesToEven; return true;
  case 1: *rm = llvm::RoundingMode::NearestTiesToAway; return true;
  case 2: *rm = llvm::RoundingMode::TowardZero; return true;
  case 3: *rm = llvm::RoundingMode::TowardPositive; return true;
  case 4: *rm = llvm::RoundingMode::TowardNegative; return true;
  default: return false;
  }
}

// True when converting these float32 bits to Float8E8M0FNU may call makeNaN(..., Negative=true):
// negative inf/NaN always; a negative magnitude above 2^127 when the mode can round the magnitude
// up (nearest modes, TowardNegative). Conservative: a nearest-mode magnitude below 1.5 * 2^127 is
// also guarded although it would round down; -2^127 exactly is exact and safe.
bool would_reach_signed_nan(uint32_t bits, llvm::RoundingMode rm) {
  if ((bits >> 31) == 0)
    return false;
  const uint32_t exponent_field = (bits >> 23) & 0xFFu;
  const uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent_field == 0xFFu)
    return true;
  if (exponent_field == 0xFEu && mantissa != 0)
    return rm == llvm::RoundingMode::NearestTiesToEven || rm == llvm::RoundingMode::NearestTiesToAway ||
           rm == llvm::RoundingMode::TowardNegative;
  return false;
}

void convert_range(const uint32_t *in, uint8_t *out, uint8_t *status, int64_t begin, int64_t end,
                   llvm::RoundingMode rm) {
  for (int64_t i = begin; i < end; ++i) {
    const uint32_t bits = in[i];
    if (would_reach_signed_nan(bits, rm)) {
      out[i] = kGuardedOutput;
      status[i] = kStatusGuarded;
      continue;
    }
    llvm::APFloat value(llvm::APFloat::IEEEsingle(), llvm::APInt(32, bits));
    bool loses_info = false;
    const llvm::APFloat::opStatus st = value.convert(llvm::APFloat::Float8E8M0FNU(), rm, &loses_info);
    out[i] = static_cast<uint8_t>(value.bitcastToAPInt().getZExtValue());
    status[i] = static_cast<uint8_t>(st);
  }
}

}  // namespace

extern "C" {

// "23.1.1" etc.: the LLVM the library was compiled against.
const char *e8m0_llvm_version() { return LLVM_VERSION_STRING; }

// Decode all 256 e8m0 encodings to float32 bits with APFloat::convert (exact for every encoding).
// Returns 0, or -1 if a conversion was not exact (a bug to report).
int e8m0_decode_all(uint32_t *out_f32_bits, uint8_t *out_status) {
  int rc = 0;
  for (uint32_t code = 0; code < 256; ++code) {
    llvm::APFloat value(llvm::APFloat::Float8E8M0FNU(), llvm::APInt(8, code));
    bool loses_info = false;
    const llvm::APFloat::opStatus st =
        value.convert(llvm::APFloat::IEEEsingle(), llvm::RoundingMode::NearestTiesToEven, &loses_info);
    out_f32_bits[code] = static_cast<uint32_t>(value.bitcastToAPInt().getZExtValue());
    out_status[code] = static_cast<uint8_t>(st);
    if (loses_info)
      rc = -1;
  }
  return rc;
}

// Convert n float32 bit patterns to e8m0 with rounding mode `mode` (0 NearestTiesToEven,
// 1 NearestTiesToAway, 2 TowardZero, 3 TowardPositive, 4 TowardNegative) on num_threads threads.
// Returns 0, or -1 for a bad mode / thread count.
int e8m0_convert_f32(const uint32_t *in, uint8_t *out, uint8_t *status, int64_t n, int mode,
                     int num_threads) {
  llvm::RoundingMode rm;
  if (!mode_from_int(mode, &rm) || num_threads < 1 || n < 0)
    return -1;
  const int64_t min_per_thread = 1 << 16;  // below this a thread costs more than it saves
  const int64_t useful = std::max<int64_t>(1, (n + min_per_thread - 1) / min_per_thread);
  const int64_t threads = std::min<int64_t>(num_threads, useful);
  if (threads <= 1) {
    convert_range(in, out, status, 0, n, rm);
    return 0;
  }
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(threads));
  const int64_t per_thread = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = std::min(n, t * per_thread);
    const int64_t end = std::min(n, begin + per_thread);
    workers.emplace_back(convert_range, in, out, status, begin, end, rm);
  }
  for (std::thread &w : workers)
    w.join();
  return 0;
}

}  // extern "C"
