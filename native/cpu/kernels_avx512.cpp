// AVX-512F kernels (16 floats per vector); F16C/AVX-512F conversions for f16, shifts for bf16.
#include <immintrin.h>

#include <cstdint>

#include "kernels.h"

namespace lukv {
namespace cpu {
namespace {

struct Vec {
  static constexpr int W = 16;
  static constexpr int kTile = 4;  // vectors per query head held in registers by pv
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float a) { return {_mm512_set1_ps(a)}; }
  static Vec loadF32(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec loadF16(const uint16_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
  void storeF16(uint16_t* p) const { _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)); }
  static Vec loadBF16(const uint16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  static Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  float sum() const { return _mm512_reduce_add_ps(v); }
  // Four horizontal sums at once: fold 512 -> 256 bits, then two rounds of pairwise adds.
  static void sum4(Vec a, Vec b, Vec c, Vec d, float* out) {
    __m256 a8 = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
    __m256 b8 = _mm256_add_ps(_mm512_castps512_ps256(b.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b.v), 1)));
    __m256 c8 = _mm256_add_ps(_mm512_castps512_ps256(c.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(c.v), 1)));
    __m256 d8 = _mm256_add_ps(_mm512_castps512_ps256(d.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d.v), 1)));
    __m256 ab = _mm256_hadd_ps(a8, b8);
    __m256 cd = _mm256_hadd_ps(c8, d8);
    __m256 abcd = _mm256_hadd_ps(ab, cd);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
  }
  float first() const { return _mm512_cvtss_f32(v); }
  static bool anyGreater(Vec a, Vec b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ) != 0; }
  static Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  float hmax() const { return _mm512_reduce_max_ps(v); }
  // Lane i of the result = sum of the lanes of v[i], for W vectors: a transpose-and-add tree
  // (pairs of floats, then pairs of doubles, then 128-bit lanes twice), 45 instructions.
  static LUKV_ALWAYS_INLINE Vec sumEach(const Vec* x) {
    __m512 t[8], u[4], w[2];
    for (int i = 0; i < 8; ++i)
      t[i] = _mm512_add_ps(_mm512_unpacklo_ps(x[2 * i].v, x[2 * i + 1].v), _mm512_unpackhi_ps(x[2 * i].v, x[2 * i + 1].v));
    for (int i = 0; i < 4; ++i) {
      __m512d a = _mm512_castps_pd(t[2 * i]), b = _mm512_castps_pd(t[2 * i + 1]);
      u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    for (int i = 0; i < 2; ++i)
      w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88), _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
    return {_mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88), _mm512_shuffle_f32x4(w[0], w[1], 0xDD))};
  }
  // 2^n * P(r) with r = x - n*ln2, |r| <= ln2/2, P the degree-7 Taylor polynomial (rel. error ~2e-7).
  static Vec exp(Vec x) {
    __m512 xc = _mm512_min_ps(x.v, _mm512_set1_ps(88.0f));
    __mmask16 tiny = _mm512_cmp_ps_mask(xc, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    xc = _mm512_max_ps(xc, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 res = _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    return {_mm512_mask_blend_ps(tiny, res, _mm512_setzero_ps())};
  }
};

#define KERNEL_NAME "avx512"
#include "kernels_impl.h"

}  // namespace

const Kernels& kernelsAvx512() { return kTable; }

}  // namespace cpu
}  // namespace lukv
