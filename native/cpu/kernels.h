// The CPU inner kernels, one table per instruction set, chosen at run time.
#pragma once
#include <cstddef>
#include <cstdint>

// For DType only: the instruction-set files must not call its inline conversions (each would be
// compiled with that file's flags and could be merged into the others; see kernels_impl.h).
#include "../core/dtype.h"

// For the small helpers of the inner loops (a row group's dot products and their reduction): left
// to the compiler's judgement they were inlined into the decode kernel but called out of line from
// the prefill one, which then stored and reloaded sixteen accumulators per four tokens.
#if defined(__GNUC__) || defined(__clang__)
#define LUKV_ALWAYS_INLINE inline __attribute__((always_inline))
#define LUKV_NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define LUKV_ALWAYS_INLINE __forceinline
#define LUKV_NOINLINE __declspec(noinline)
#else
#define LUKV_ALWAYS_INLINE inline
#define LUKV_NOINLINE
#endif

namespace lukv {
namespace cpu {

// What attendSpan reads and continues. Token t of the head sits in page pages[t / P] at row t % P:
// K rows at base + page * pageBytes, V rows P rows after them (rowBytes each). Query row i (i <
// rows) has its G query heads' queries at q + i * qStride and sees the tokens [t0, ends[i]); its
// online-softmax state is at state + i * stateStride: reference maxima m[G] (-inf before the first
// block), sums l[G], then accumulators acc[G * D]. m[g] is a reference, not always the exact
// maximum: it moves only when a block's scores pass it by a margin, weights stay below e^8, and
// acc / l is the softmax-weighted sum of V whatever the reference.
// How the kernels request rows ahead of use while streaming memory. The best hint differs by
// processor (see bench/README.md): bestPrefetch() picks it from the vendor and family.
enum class Prefetch : int { None = 0, T0 = 1, T2 = 2, Nta = 3 };
const char* prefetchName(Prefetch p);
// "auto" (bestPrefetch()), "t0", "t2", "nta" or "none"; false for any other name.
bool parsePrefetch(const char* name, Prefetch* out);
Prefetch bestPrefetch();

struct Span {
  const uint8_t* base;
  size_t pageBytes, rowBytes;
  const int32_t* pages;
  int64_t numPages;
  int P;
  int32_t t0;
  int block;       // tokens per softmax block: a multiple of P, or at most P
  int aheadPages;  // 0, or how many pages ahead the kernels request rows (while streaming memory)
  Prefetch prefetch;  // the hint those requests use
  int rows;        // query rows, at most kSpanRows
  const float* q;
  int64_t qStride;
  const int32_t* ends;
  float* state;
  int64_t stateStride;
  float* scratch;  // G * block floats
  // Optional, for several rows over 16-bit storage: 2 * block * D floats (64-byte aligned) in which
  // a block's K and V rows are converted once for all rows.
  float* converted;
  // Optional: raw (scaled, pre-softmax) scores of row i, raw[i * rawRowStride + g * rawStride + t - t0].
  float* raw;
  int64_t rawRowStride, rawStride;
};
constexpr int kSpanRows = 8;

// dt: the cache's storage type, in which K and V rows are read.
struct Kernels {
  const char* name;
  // s[g*ld + j] = dot(q + g*D, row j of K) for j < n, g < G. K rows are contiguous, D elements each.
  void (*qk)(DType dt, const void* K, int n, int D, const float* q, int G, float* s, int ld);
  // x[i] = exp(x[i] - shift) for i < n; returns the sum of the results.
  float (*expSum)(float* x, int n, float shift);
  // max of x[i] for i < n (-inf when n = 0; NaN inputs are not expected).
  float (*maxOf)(const float* x, int n);
  // Attention of up to kSpanRows query rows over a token range of one KV head, for G query heads
  // each (see Span). Block by block, every row that sees the block is served while its K and V
  // rows are in cache.
  void (*attendSpan)(DType dt, const Span& span, int D, int G);
  // out[j] = ||row j|| (L2 norm of K or V rows) for j < n, also for rows of tiny values.
  void (*rowNorms)(DType dt, const void* rows, int n, int D, float* out);
  // out[g*ld + j] = k_j' A_g k_j for f32 rows k_j of K [n, D] and f32 matrices A_g [G, D, D].
  void (*quadForms)(const float* K, int n, int D, const float* A, int G, float* out, int ld);
  // dst[i] = the f16 / bf16 bits of src[i] for i < n, rounded to nearest even: f32ToF16 and
  // f32ToBf16 (core/dtype.h) bit for bit on every finite value and infinity (a NaN stays a NaN,
  // its payload may differ).
  void (*toF16)(const float* src, uint16_t* dst, int n);
  void (*toBf16)(const float* src, uint16_t* dst, int n);
  // Sum of p[i] for i < n, read as fast as the loads go (the plain read of the memory benchmark);
  // `prefetch` adds software requests 2 KiB ahead.
  float (*readSum)(const float* p, size_t n, bool prefetch);
};

const Kernels& kernelsGeneric();
const Kernels& kernelsAvx2();
const Kernels& kernelsAvx512();
const Kernels& kernelsNeon();  // arm64 builds only

// Best table for this processor, or the one named ("avx512", "avx2", "neon", "generic"); nullptr when the
// named one cannot run here.
const Kernels* selectKernels(const char* name);
// Names of the tables this processor can run, best first.
const char* bestKernelName();
bool cpuSupports(const char* name);

}  // namespace cpu
}  // namespace lukv
