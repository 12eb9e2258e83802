// Storage types of the cache and their conversions to and from f32.
#pragma once
#include <cstdint>
#include <cstring>

namespace lukv {

enum class DType : int { F32 = 0, F16 = 1, BF16 = 2 };

inline int dtypeBytes(DType t) { return t == DType::F32 ? 4 : 2; }
inline const char* dtypeName(DType t) {
  return t == DType::F32 ? "f32" : t == DType::F16 ? "f16" : "bf16";
}

inline float bitsToFloat(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t floatToBits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact for every input including subnormals, inf and NaN.
inline float f16ToF32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0) {
    if (man == 0) return bitsToFloat(sign);
    // Subnormal half: value = man * 2^-24.
    float v = (float)man * (1.0f / 16777216.0f);
    return sign ? -v : v;
  }
  if (exp == 31) return bitsToFloat(sign | 0x7f800000u | (man << 13));
  return bitsToFloat(sign | ((exp + 112) << 23) | (man << 13));
}

// float -> IEEE half, round to nearest even, overflow to inf, NaN kept quiet.
inline uint16_t f32ToF16(float f) {
  uint32_t x = floatToBits(f);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520 -> inf
  if (absx < 0x38800000u) {
    // Result is subnormal (or zero): round absx * 2^24 to an integer, ties to even.
    if (absx < 0x33000000u) return (uint16_t)sign;  // < 2^-25 rounds to zero
    uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e;  // 14 + (113 - e) ... value = m * 2^(e-150); want m * 2^(e-150+24)
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t e = (absx >> 23) - 112;
  uint32_t m = absx & 0x7fffff;
  uint32_t q = (e << 10) | (m >> 13);
  uint32_t rem = m & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
  return (uint16_t)(sign | q);
}

inline float bf16ToF32(uint16_t h) { return bitsToFloat((uint32_t)h << 16); }

// float -> bfloat16, round to nearest even, NaN kept quiet.
inline uint16_t f32ToBf16(float f) {
  uint32_t x = floatToBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  uint32_t lsb = (x >> 16) & 1;
  return (uint16_t)((x + 0x7fff + lsb) >> 16);
}

// A row whose float32 squares sum below this may have lost them to underflow (values under ~1e-19),
// and one whose sum is infinite overflowed (values over ~1e19, which V rows may hold): the norms of
// K and V rows sum such a row again in double, on every backend.
constexpr float kTinySquares = 0x1p-100f;

}  // namespace lukv
