// The CPU inner kernels, one table per instruction set, chosen at run time.
#pragma once
#include <cstdint>

namespace lukv {
namespace cpu {

// dt: 0 = f32, 1 = f16, 2 = bf16 (the cache's storage type).
struct Kernels {
  const char* name;
  // s[g*ld + j] = dot(q + g*D, row j of K) for j < n, g < G. K rows are contiguous, D elements each.
  void (*qk)(int dt, const void* K, int n, int D, const float* q, int G, float* s, int ld);
  // acc[g*D + d] += sum_j p[g*ld + j] * V[j][d] for j < n, g < G.
  void (*pv)(int dt, const void* V, int n, int D, const float* p, int ld, int G, float* acc);
  // x[i] = exp(x[i] - shift) for i < n; returns the sum of the results.
  float (*expSum)(float* x, int n, float shift);
  // acc[i] *= a for i < n.
  void (*scale)(float* acc, int n, float a);
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
