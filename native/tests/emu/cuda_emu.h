// A CPU emulator of the parts of the CUDA execution model the lukv kernels use, so the kernel
// sources can be compiled with g++ and checked (also under AddressSanitizer) on machines without
// a GPU. Every thread of a block runs as a fiber; __syncthreads and warp shuffles are rendezvous
// points, so barrier and shuffle semantics are exact. Divergent shuffles, barriers reached by
// only part of a block, and deadlocks are reported as errors. Not emulated: memory races,
// timing, warp-synchronous code without explicit shuffles.
#pragma once
#include <math.h>

#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Blocks run one after another, so a function-local static is exactly one block's shared memory.
#define __shared__ static

typedef struct CUstream_st* cudaStream_t;

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  unsigned x, y, z, w;
};
struct float4 {
  float x, y, z, w;
};
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
// Blocks run one after another: memory is always coherent and atomics need no hardware.
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}

namespace emu {

// Runs body once per thread of every block of the grid. Throws std::runtime_error on a
// deadlock, a divergent shuffle or a barrier after some threads of the block returned.
void launch(dim3 grid, dim3 block, const std::function<void()>& body);

void syncthreads(int line);
// Exchanges 8 bytes with the lanes of the warp; srcOf(lane) names the lane to read from.
uint64_t shuffle(unsigned mask, uint64_t value, int mode, int arg, int line);

struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, switches = 0;
};
Stats& stats();

}  // namespace emu

inline void __syncthreads_impl(int line) { emu::syncthreads(line); }
#define __syncthreads() __syncthreads_impl(__LINE__)

template <class T>
inline T emuShuffle(unsigned mask, T v, int mode, int arg, int line) {
  static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = emu::shuffle(mask, bits, mode, arg, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
#define __shfl_xor_sync(mask, v, laneMask) emuShuffle((mask), (v), 0, (laneMask), __LINE__)
#define __shfl_sync(mask, v, srcLane) emuShuffle((mask), (v), 1, (srcLane), __LINE__)
