// NEON kernels for arm64 (4 floats per vector; f16 through the ARMv8 conversion instructions).
// Every arm64 processor has NEON, so this table needs no flags and no run-time check.
#include <arm_neon.h>

#include <cstdint>

#include "kernels.h"

namespace lukv {
namespace cpu {
namespace {

struct Vec {
  static constexpr int W = 4;
  static constexpr int kTile = 4;  // vectors per query head held in registers by pv (16 of 32 registers)
  float32x4_t v;
  static Vec zero() { return {vdupq_n_f32(0.f)}; }
  static Vec set1(float a) { return {vdupq_n_f32(a)}; }
  static Vec loadF32(const float* p) { return {vld1q_f32(p)}; }
  static Vec loadF16(const uint16_t* p) { return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))}; }
  static Vec loadBF16(const uint16_t* p) { return {vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))}; }
  // The ARMv8 conversion, which rounds to nearest even (the default rounding mode).
  void storeF16(uint16_t* p) const { vst1_u16(p, vreinterpret_u16_f16(vcvt_f16_f32(v))); }
  static Vec fma(Vec a, Vec b, Vec c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
  static Vec add(Vec a, Vec b) { return {vaddq_f32(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {vsubq_f32(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {vmulq_f32(a.v, b.v)}; }
  void store(float* p) const { vst1q_f32(p, v); }
  float sum() const { return vaddvq_f32(v); }
  // Lane i of the result = sum of the lanes of x[i]: two rounds of pairwise adds.
  static LUKV_ALWAYS_INLINE Vec sumEach(const Vec* x) { return {vpaddq_f32(vpaddq_f32(x[0].v, x[1].v), vpaddq_f32(x[2].v, x[3].v))}; }
  static void sum4(Vec a, Vec b, Vec c, Vec d, float* out) {
    const Vec x[4] = {a, b, c, d};
    sumEach(x).store(out);
  }
  float first() const { return vgetq_lane_f32(v, 0); }
  static bool anyGreater(Vec a, Vec b) { return vmaxvq_u32(vcgtq_f32(a.v, b.v)) != 0; }
  static Vec max(Vec a, Vec b) { return {vmaxq_f32(a.v, b.v)}; }
  float hmax() const { return vmaxvq_f32(v); }
  // 2^n * P(r) with r = x - n*ln2, |r| <= ln2/2, P the degree-7 Taylor polynomial (rel. error ~2e-7),
  // as in the x86 tables.
  static Vec exp(Vec x) {
    float32x4_t xc = vminq_f32(x.v, vdupq_n_f32(88.0f));
    const uint32x4_t tiny = vcltq_f32(xc, vdupq_n_f32(-87.0f));
    xc = vmaxq_f32(xc, vdupq_n_f32(-87.0f));
    const float32x4_t n = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(1.44269504088896341f)));
    float32x4_t r = vfmsq_f32(xc, n, vdupq_n_f32(0.693145751953125f));
    r = vfmsq_f32(r, n, vdupq_n_f32(1.428606765330187e-06f));
    float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    const float32x4_t res = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return {vbslq_f32(tiny, vdupq_n_f32(0.f), res)};
  }
};

#define KERNEL_NAME "neon"
#include "kernels_impl.h"

}  // namespace

const Kernels& kernelsNeon() { return kTable; }

}  // namespace cpu
}  // namespace lukv
