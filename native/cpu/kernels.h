// The CPU inner kernels, one table per instruction set, chosen at run time.
#pragma once
#include <cstdint>

namespace lukv {
namespace cpu {

// Where attendSpan finds one head's rows: token t sits in page pages[t / P] at row t % P, K rows
// at base + page * pageBytes, V rows P rows after them (rowBytes each).
struct Span {
  const uint8_t* base;
  size_t pageBytes, rowBytes;
  const int32_t* pages;
  int64_t numPages;
  int P;
  int32_t t0, t1;
  int block;       // tokens per softmax block: a multiple of P, or at most P
  int aheadPages;  // 0, or how many pages ahead the kernels request rows (while streaming memory)
  float* scratch;  // G * block floats
  // Optional: raw (scaled, pre-softmax) scores, raw[g * rawStride + t - t0].
  float* raw;
  int64_t rawStride;
};

// dt: 0 = f32, 1 = f16, 2 = bf16 (the cache's storage type).
struct Kernels {
  const char* name;
  // s[g*ld + j] = dot(q + g*D, row j of K) for j < n, g < G. K rows are contiguous, D elements each.
  // `ahead` (may be null): n rows of the same size whose cache lines are requested while these are
  // computed, one row per row, so that memory traffic for the next rows overlaps the arithmetic.
  void (*qk)(int dt, const void* K, int n, int D, const float* q, int G, float* s, int ld, const void* ahead);
  // x[i] = exp(x[i] - shift) for i < n; returns the sum of the results.
  float (*expSum)(float* x, int n, float shift);
  // max of x[i] for i < n (-inf when n = 0; NaN inputs are not expected).
  float (*maxOf)(const float* x, int n);
  // Attention of one query row over the tokens [t0, t1) of one KV head, for G query heads:
  // continues the online-softmax state: reference maxima m[g] (-inf before the first block), sums
  // l[g] and accumulators acc[g*D .. g*D + D). m[g] is a reference, not always the exact maximum:
  // it moves only when a block's scores pass it by a margin, weights stay below e^8, and acc / l is
  // the softmax-weighted sum of V whatever the reference. See Span for where the rows are.
  void (*attendSpan)(int dt, const struct Span& span, int D, const float* q, int G, float* m, float* l, float* acc);
  // out[j] = ||row j|| (L2 norm of K or V rows) for j < n.
  void (*rowNorms)(int dt, const void* rows, int n, int D, float* out);
};

const Kernels& kernelsGeneric();
const Kernels& kernelsAvx2();
const Kernels& kernelsAvx512();

// Best table for this processor, or the one named ("avx512", "avx2", "generic"); nullptr when the
// named one cannot run here.
const Kernels* selectKernels(const char* name);
// Names of the tables this processor can run, best first.
const char* bestKernelName();
bool cpuSupports(const char* name);

}  // namespace cpu
}  // namespace lukv
