// Device-side helpers shared by every kernel: storage types as 16-byte vectors, conversions,
// warp reductions. The same kernel sources also compile as plain C++ against a CPU emulator of
// the CUDA execution model (LUKV_CUDA_EMULATE, native/tests/emu), which is how they are checked
// on machines without a GPU.
#pragma once
#include <cstdint>

#include "layout.h"

#ifdef LUKV_CUDA_EMULATE
#include "cuda_emu.h"
#include "../core/dtype.h"
#define LUKV_DEVICE inline
#define LUKV_UNROLL
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define LUKV_DEVICE __device__ __forceinline__
#define LUKV_UNROLL _Pragma("unroll")
#endif

namespace lukv {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

LUKV_DEVICE float f16ToFloat(uint32_t bits) {
#ifdef LUKV_CUDA_EMULATE
  return lukv::f16ToF32((uint16_t)bits);
#else
  return __half2float(__ushort_as_half((unsigned short)bits));
#endif
}

LUKV_DEVICE uint32_t floatToF16(float f) {
#ifdef LUKV_CUDA_EMULATE
  return lukv::f32ToF16(f);
#else
  return __half_as_ushort(__float2half_rn(f));
#endif
}

LUKV_DEVICE float bf16ToFloat(uint32_t bits) { return __uint_as_float(bits << 16); }

LUKV_DEVICE uint32_t floatToBf16(float f) {
#ifdef LUKV_CUDA_EMULATE
  return lukv::f32ToBf16(f);
#else
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#endif
}

// A storage type seen 16 bytes at a time: kPerVec elements per vector.
struct StoreF32 {
  static constexpr int kDType = 0, kBytes = 4, kPerVec = 4;
  static LUKV_DEVICE void unpack(const uint4& r, float* o) {
    o[0] = __uint_as_float(r.x);
    o[1] = __uint_as_float(r.y);
    o[2] = __uint_as_float(r.z);
    o[3] = __uint_as_float(r.w);
  }
  static LUKV_DEVICE uint4 pack(const float* i) {
    return make_uint4(__float_as_uint(i[0]), __float_as_uint(i[1]), __float_as_uint(i[2]), __float_as_uint(i[3]));
  }
};

// The 16-bit storage types: eight elements per 16-byte vector, unpacked and packed two at a time
// by the type's unpack2 and pack2 (Pair).
template <class Pair>
struct Store16 : Pair {
  static constexpr int kBytes = 2, kPerVec = 8;
  static LUKV_DEVICE void unpack(const uint4& r, float* o) {
    Pair::unpack2(r.x, o);
    Pair::unpack2(r.y, o + 2);
    Pair::unpack2(r.z, o + 4);
    Pair::unpack2(r.w, o + 6);
  }
  static LUKV_DEVICE uint4 pack(const float* i) {
    return make_uint4(Pair::pack2(i[0], i[1]), Pair::pack2(i[2], i[3]), Pair::pack2(i[4], i[5]), Pair::pack2(i[6], i[7]));
  }
};

struct F16Pair {
  static constexpr int kDType = 1;
  static LUKV_DEVICE void unpack2(uint32_t w, float* o) {
#ifdef LUKV_CUDA_EMULATE
    o[0] = f16ToFloat(w & 0xffffu);
    o[1] = f16ToFloat(w >> 16);
#else
    // Low half is element 0: the same order as in memory.
    __half2 h = *reinterpret_cast<const __half2*>(&w);
    float2 f = __half22float2(h);
    o[0] = f.x;
    o[1] = f.y;
#endif
  }
  static LUKV_DEVICE uint32_t pack2(float a, float b) { return floatToF16(a) | (floatToF16(b) << 16); }
};
using StoreF16 = Store16<F16Pair>;

struct BF16Pair {
  static constexpr int kDType = 2;
  static LUKV_DEVICE void unpack2(uint32_t w, float* o) {
    o[0] = __uint_as_float(w << 16);
    o[1] = __uint_as_float(w & 0xffff0000u);
  }
  static LUKV_DEVICE uint32_t pack2(float a, float b) { return floatToBf16(a) | (floatToBf16(b) << 16); }
};
using StoreBF16 = Store16<BF16Pair>;

// Read-only 16-byte load: pages are not written while a kernel reads them.
LUKV_DEVICE uint4 load16(const uint8_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

LUKV_DEVICE uint4 zero16() { return make_uint4(0u, 0u, 0u, 0u); }

// Sum / max over the lanes whose index differs only in the bits of [from, to) (powers of two).
template <int From, int To, class T>
LUKV_DEVICE T laneSum(T v) {
  LUKV_UNROLL
  for (int o = From; o < To; o <<= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

template <int From, int To>
LUKV_DEVICE float laneMax(float v) {
  LUKV_UNROLL
  for (int o = From; o < To; o <<= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Token t of a head -> address of its K row (its V row is pageSize rows further).
LUKV_DEVICE const uint8_t* keyRow(const PoolView& pool, const int32_t* pages, int32_t pageShift, int32_t t) {
  const int32_t pi = pageShift >= 0 ? (t >> pageShift) : t / pool.pageSize;
  const int32_t slot = t - pi * pool.pageSize;
  return pool.data + (int64_t)pages[pi] * pool.pageBytes + (int64_t)slot * pool.rowBytes;
}

}  // namespace cuda
}  // namespace lukv
