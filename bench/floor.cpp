// The arithmetic floor of f16 decode attention on one AVX-512 core: a (token, KV head) with four
// query heads of 128 needs 64 zmm FMAs (32 for the scores, 32 for the weighted sum of V) and 16
// f16 -> f32 conversions (its K and V rows); this times exactly that with the rows in L1, and the
// FMAs alone, so that a kernel's ns per (token, KV head) can be put beside what the core allows.
// Build and run (x86-64 with AVX-512):
//   g++ -O3 -mavx512f -mavx512vl -mf16c -o /tmp/floor bench/floor.cpp && /tmp/floor
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace {

// 16 independent accumulators (4 rows' worth of vectors x 4 heads), each FMA chain 4 deep per
// token: the loop is bound by FMA throughput, not latency. CONVERT: each vector of the row is read
// from f16 and converted, as the kernels do; otherwise the FMAs alone.
template <bool CONVERT>
double nsPerPair(const uint16_t* rows, long tokens, float* sink) {
  __m512 acc[16];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512 q0 = _mm512_set1_ps(1e-3f), q1 = _mm512_set1_ps(2e-3f), q2 = _mm512_set1_ps(3e-3f), q3 = _mm512_set1_ps(4e-3f);
  const auto t0 = std::chrono::steady_clock::now();
  for (long n = 0; n < tokens; ++n) {
    const uint16_t* row = rows + (n & 15) * 256;  // K then V of one token: 2 x 128 halves
#pragma GCC unroll 16
    for (int v = 0; v < 16; ++v) {
      const __m512 x = CONVERT ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i*)(row + v * 16))) : q3;
      const int k = (v & 3) * 4;
      acc[k] = _mm512_fmadd_ps(q0, x, acc[k]);
      acc[k + 1] = _mm512_fmadd_ps(q1, x, acc[k + 1]);
      acc[k + 2] = _mm512_fmadd_ps(q2, x, acc[k + 2]);
      acc[k + 3] = _mm512_fmadd_ps(q3, x, acc[k + 3]);
    }
    __asm__ volatile("" : "+v"(q0), "+v"(q1));  // keeps the loop from being folded
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / tokens;
  for (auto& a : acc) *sink += _mm512_reduce_add_ps(a);
  return ns;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main() {
  alignas(64) static uint16_t rows[16 * 256];
  for (int i = 0; i < 16 * 256; ++i) rows[i] = (uint16_t)(0x3000 + (i * 7) % 1000);
  float sink = 0.f;
  std::vector<double> withConvert, fmaOnly;
  for (int rep = 0; rep < 9; ++rep) {
    withConvert.push_back(nsPerPair<true>(rows, 2000000, &sink));
    fmaOnly.push_back(nsPerPair<false>(rows, 2000000, &sink));
  }
  const double a = median(withConvert), b = median(fmaOnly);
  std::printf("one thread, median of 9:\n");
  std::printf("  64 FMA + 16 f16 conversions: %.2f ns per (token, KV head)\n", a);
  std::printf("  64 FMA alone:                %.2f ns per (token, KV head), %.2f G zmm FMA/s\n", b, 64.0 / b);
  std::printf("(checksum %g)\n", sink);
  return 0;
}
