// Portable kernels for any processor (x86-64 without AVX2, arm64, ...): plain loops over 4-float
// groups that the compiler maps to the baseline vector unit.
#include <cmath>
#include <cstdint>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "kernels.h"

namespace lukv {
namespace cpu {
namespace {

struct Vec {
  static constexpr int W = 4;
  static constexpr int kTile = 1;
  float v[4];
  static Vec zero() { return {{0, 0, 0, 0}}; }
  static Vec set1(float a) { return {{a, a, a, a}}; }
  static Vec loadF32(const float* p) { return {{p[0], p[1], p[2], p[3]}}; }
  static Vec loadF16(const uint16_t* p);
  static Vec loadBF16(const uint16_t* p);
  void storeF16(uint16_t* p) const;
  static Vec fma(Vec a, Vec b, Vec c) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
  }
  static Vec add(Vec a, Vec b) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static Vec sub(Vec a, Vec b) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] - b.v[i];
    return r;
  }
  static Vec mul(Vec a, Vec b) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] * b.v[i];
    return r;
  }
  void store(float* p) const {
    for (int i = 0; i < 4; ++i) p[i] = v[i];
  }
  float sum() const { return (v[0] + v[1]) + (v[2] + v[3]); }
  static void sum4(Vec a, Vec b, Vec c, Vec d, float* out) {
    out[0] = a.sum();
    out[1] = b.sum();
    out[2] = c.sum();
    out[3] = d.sum();
  }
  float first() const { return v[0]; }
  static bool anyGreater(Vec a, Vec b) { return a.v[0] > b.v[0] || a.v[1] > b.v[1] || a.v[2] > b.v[2] || a.v[3] > b.v[3]; }
  static Vec max(Vec a, Vec b) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return r;
  }
  float hmax() const {
    float m = v[0];
    for (int i = 1; i < 4; ++i) m = v[i] > m ? v[i] : m;
    return m;
  }
  // Lane i of the result = sum of the lanes of x[i].
  static LUKV_ALWAYS_INLINE Vec sumEach(const Vec* x) { return {{x[0].sum(), x[1].sum(), x[2].sum(), x[3].sum()}}; }
  static Vec exp(Vec x) {
    Vec r;
    for (int i = 0; i < 4; ++i) r.v[i] = x.v[i] < -87.0f ? 0.0f : std::exp(x.v[i]);
    return r;
  }
};

#define KERNEL_NAME "generic"
#include "kernels_impl.h"

Vec Vec::loadF16(const uint16_t* p) {
  return {{scalarLoad(DType::F16, p, 0), scalarLoad(DType::F16, p, 1), scalarLoad(DType::F16, p, 2), scalarLoad(DType::F16, p, 3)}};
}
Vec Vec::loadBF16(const uint16_t* p) {
  return {{scalarLoad(DType::BF16, p, 0), scalarLoad(DType::BF16, p, 1), scalarLoad(DType::BF16, p, 2), scalarLoad(DType::BF16, p, 3)}};
}
// This file has no instruction-set flags, so it may use core/dtype.h's inline conversion.
void Vec::storeF16(uint16_t* p) const {
  for (int i = 0; i < 4; ++i) p[i] = f32ToF16(v[i]);
}

}  // namespace

const Kernels& kernelsGeneric() { return kTable; }

static bool supports(const char* name) {
  if (__builtin_strcmp(name, "generic") == 0) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (__builtin_strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#elif defined(__aarch64__)
  if (__builtin_strcmp(name, "neon") == 0) return true;  // part of every arm64 processor
#endif
  return false;
}

bool cpuSupports(const char* name) { return supports(name); }

const char* bestKernelName() {
  if (supports("avx512")) return "avx512";
  if (supports("avx2")) return "avx2";
  if (supports("neon")) return "neon";
  return "generic";
}

const Kernels* selectKernels(const char* name) {
  if (name == nullptr || __builtin_strcmp(name, "auto") == 0) name = bestKernelName();
  if (!supports(name)) return nullptr;
#if defined(__x86_64__) || defined(__i386__)  // the AVX tables are built for x86 only
  if (__builtin_strcmp(name, "avx512") == 0) return &kernelsAvx512();
  if (__builtin_strcmp(name, "avx2") == 0) return &kernelsAvx2();
#elif defined(__aarch64__)  // the NEON table is built for arm64 only
  if (__builtin_strcmp(name, "neon") == 0) return &kernelsNeon();
#endif
  return &kernelsGeneric();
}

const char* prefetchName(Prefetch p) {
  switch (p) {
    case Prefetch::None: return "none";
    case Prefetch::T0: return "t0";
    case Prefetch::T2: return "t2";
    case Prefetch::Nta: return "nta";
  }
  return "none";
}

bool parsePrefetch(const char* name, Prefetch* out) {
  if (__builtin_strcmp(name, "auto") == 0) {
    *out = bestPrefetch();
    return true;
  }
  for (int i = 0; i < 4; ++i) {
    const Prefetch p = (Prefetch)i;
    if (__builtin_strcmp(name, prefetchName(p)) == 0) {
      *out = p;
      return true;
    }
  }
  return false;
}

#if defined(__x86_64__) || defined(__i386__)
// The processor's family as Linux reports it ("cpu family"): base family, plus the extended family
// when the base is 15 (AMD's parts from the K8 on, family 23 = Zen 1/2, 25 = Zen 3/4, 26 = Zen 5).
static int cpuFamily() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const int base = (a >> 8) & 0xf;
  return base == 0xf ? base + ((a >> 20) & 0xff) : base;
}
#endif

// The hint bench/attention.js measured fastest per processor (bench/README.md, one section per
// processor): requests into L2 (t2) on Intel and on AMD up to family 25 (Zen 4), the non-temporal
// hint on AMD from family 26 (Zen 5); the ordinary hint elsewhere.
Prefetch bestPrefetch() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_is("amd")) return cpuFamily() >= 26 ? Prefetch::Nta : Prefetch::T2;
  if (__builtin_cpu_is("intel")) return Prefetch::T2;
  return Prefetch::T0;
#else
  return Prefetch::Nta;  // arm64: one streaming hint (pldl1strm) serves every setting but "none"
#endif
}

}  // namespace cpu
}  // namespace lukv
