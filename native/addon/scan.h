// Input scans the addon runs before the kernels: the first value that is not finite (or too large
// for the cache's storage type) and the largest magnitude, which bounds the scores attend computes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lukv {

struct ScanResult {
  int64_t firstBad = -1;  // index of the first value with !(|x| < limit), -1 when none
  double maxAbs = 0;      // largest |x| before firstBad
};

// The first value that is not finite (or not below `limit`) and the largest magnitude of n floats.
ScanResult scanF32(const float* x, size_t n, float limit);
// Raw 16-bit words of f16 (bf16 = false) or bf16: a value is bad when its exponent is all ones.
ScanResult scanRaw16(const uint16_t* x, size_t n, bool bf16);

}  // namespace lukv
