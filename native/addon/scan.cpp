// The input scans of scan.h: the AVX2 build (scan_avx2.cpp) where the processor has it, else the
// baseline one.
#include "scan_impl.h"

namespace lukv {

#ifdef LUKV_SCAN_AVX2
ScanResult scanF32Avx2(const float* x, size_t n, float limit);
ScanResult scanRaw16Avx2(const uint16_t* x, size_t n, bool bf16);

static bool hasAvx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return yes;
}

ScanResult scanF32(const float* x, size_t n, float limit) { return hasAvx2() ? scanF32Avx2(x, n, limit) : scanF32Body(x, n, limit); }
ScanResult scanRaw16(const uint16_t* x, size_t n, bool bf16) { return hasAvx2() ? scanRaw16Avx2(x, n, bf16) : scanRaw16Body(x, n, bf16); }
#else
ScanResult scanF32(const float* x, size_t n, float limit) { return scanF32Body(x, n, limit); }
ScanResult scanRaw16(const uint16_t* x, size_t n, bool bf16) { return scanRaw16Body(x, n, bf16); }
#endif

}  // namespace lukv
