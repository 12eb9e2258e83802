// The bodies of the input scans (scan.h), compiled once per instruction set: scan.cpp for the
// baseline, scan_avx2.cpp with AVX2. Internal linkage, so that each file keeps its own copy.
#pragma once
#include <cmath>
#include <cstring>

#include "scan.h"

namespace lukv {
namespace {

// Blocks of 256 keep the common pass branch-free; only a block holding a bad value is scanned again
// for its first index. The pass works on bit patterns: with the sign cleared, the patterns of
// floats order like their magnitudes (+inf above every finite value, NaN above +inf), so the
// largest magnitude is an unsigned integer maximum and !(|x| < limit) is bits >= the limit's bits.
// Written on floats (fabs, a > m ? a : m) the loop does not vectorise: without -ffast-math the
// compiler must keep the NaN order of the comparisons, and a decode step's 4,096 queries took 7 us.
inline ScanResult scanF32Body(const float* x, size_t n, float limit) {
  constexpr size_t kBlock = 256;
  ScanResult r;
  uint32_t limitBits;
  const float lim = std::fabs(limit);
  std::memcpy(&limitBits, &lim, 4);
  if (!(limit > 0)) limitBits = 0;  // nothing is below a limit of 0 (or NaN)
  const int32_t limit32 = (int32_t)limitBits;  // at most +inf's bits, so non-negative
  uint32_t maxBits = 0;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = b + kBlock < n ? b + kBlock : n;
    int32_t m = 0, bad = 0;
    for (size_t i = b; i < e; ++i) {
      int32_t u;
      std::memcpy(&u, x + i, 4);
      u &= 0x7fffffff;  // non-negative: a signed compare (SSE2 has no unsigned one) orders them too
      m = u > m ? u : m;
      bad |= u >= limit32;
    }
    if (bad) {
      for (size_t i = b; i < e; ++i) {
        const float a = std::fabs(x[i]);
        if (!(a < limit)) {
          r.firstBad = (int64_t)i;
          break;
        }
        uint32_t u;
        std::memcpy(&u, &a, 4);
        maxBits = u > maxBits ? u : maxBits;
      }
      break;
    }
    maxBits = (uint32_t)m > maxBits ? (uint32_t)m : maxBits;
  }
  float maxAbs;
  std::memcpy(&maxAbs, &maxBits, 4);
  r.maxAbs = maxAbs;
  return r;
}

// The same blocks over raw f16/bf16 words: with the sign cleared, a word at or above the mask of
// its exponent has an exponent of all ones (infinity or NaN), and magnitudes of one format order
// like their bit patterns. The words stay below 2^15, so a signed 16-bit maximum orders them.
inline ScanResult scanRaw16Body(const uint16_t* x, size_t n, bool bf16) {
  constexpr size_t kBlock = 512;
  const int16_t expMask = bf16 ? 0x7f80 : 0x7c00;
  ScanResult r;
  int16_t maxBits = 0;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = b + kBlock < n ? b + kBlock : n;
    int16_t m = 0, bad = 0;
    for (size_t i = b; i < e; ++i) {
      const int16_t a = (int16_t)(x[i] & 0x7fff);
      m = a > m ? a : m;
      bad |= a >= expMask;
    }
    if (bad) {
      for (size_t i = b; i < e; ++i) {
        const int16_t a = (int16_t)(x[i] & 0x7fff);
        if (a >= expMask) {
          r.firstBad = (int64_t)i;
          break;
        }
        maxBits = a > maxBits ? a : maxBits;
      }
      break;
    }
    maxBits = m > maxBits ? m : maxBits;
  }
  if (bf16) {
    uint32_t u = (uint32_t)(uint16_t)maxBits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    r.maxAbs = f;
  } else {
    const int exp = (maxBits >> 10) & 0x1f, man = maxBits & 0x3ff;
    r.maxAbs = exp == 0 ? std::ldexp((double)man, -24) : std::ldexp(1.0 + man / 1024.0, exp - 15);
  }
  return r;
}

}  // namespace
}  // namespace lukv
