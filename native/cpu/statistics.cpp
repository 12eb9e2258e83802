#include "statistics.h"

#include <algorithm>
#include <vector>

#include "kernels.h"

namespace lukv {
namespace cpu {

void accumulateQueryStatistics(const float* queries, int first, int tokens, int queryHeads, int headDim,
                               const double* shift, double* sum, double* products) {
  const int Q = queryHeads, D = headDim;
  // Rows per float32 block: short enough that a block's dot products stay exact to ~1e-6.
  constexpr int kBlock = 256;
  const Kernels* k = products ? selectKernels("auto") : nullptr;
  std::vector<float> columns, block;
  for (int r0 = first; r0 < tokens; r0 += kBlock) {
    const int n = std::min(kBlock, tokens - r0);
    for (int h = 0; h < Q; ++h) {
      const double* c = shift + (size_t)h * D;
      double* s = sum + (size_t)h * D;
      // The head's centred rows as columns: columns[i * n + r] = q[r][i] - shift[i].
      columns.assign((size_t)D * n, 0.f);
      for (int r = 0; r < n; ++r) {
        const float* q = queries + ((size_t)(r0 + r) * Q + h) * D;
        for (int i = 0; i < D; ++i) {
          const double x = (double)q[i] - c[i];
          s[i] += x;
          columns[(size_t)i * n + r] = (float)x;
        }
      }
      if (!products) continue;
      // Dimension i against every dimension j: D "queries" of length n over D "keys".
      block.resize((size_t)D * D);
      k->qk(0, columns.data(), D, n, columns.data(), D, block.data(), D);
      double* p = products + (size_t)h * D * D;
      for (size_t x = 0; x < (size_t)D * D; ++x) p[x] += block[x];
    }
  }
}

}  // namespace cpu
}  // namespace lukv
