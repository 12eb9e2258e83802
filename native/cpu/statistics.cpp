#include "statistics.h"

#include <algorithm>
#include <cmath>
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
      // Dimensions i0 .. i0 + 15 against every dimension j >= i0 (the upper triangle, in bands of
      // 16 "queries" of length n over D - i0 "keys"), mirrored into the lower one.
      block.resize((size_t)16 * D);
      double* p = products + (size_t)h * D * D;
      const auto centred = [&](int r, int i) { return (double)queries[((size_t)(r0 + r) * Q + h) * D + i] - c[i]; };
      for (int i0 = 0; i0 < D; i0 += 16) {
        const int rows = std::min(16, D - i0);
        const float* band = columns.data() + (size_t)i0 * n;
        k->qk(DType::F32, band, D - i0, n, band, rows, block.data(), D - i0);
        // Values past about 1e18 overflow float32 products (or a block's sum of them) although the
        // statistics fit: such a band is summed again in float64 from the rows.
        const bool overflowed = std::any_of(block.begin(), block.begin() + (size_t)rows * (D - i0), [](float v) { return !std::isfinite(v); });
        for (int g = 0; g < rows; ++g)
          for (int j = g; j < D - i0; ++j) {
            double v = block[(size_t)g * (D - i0) + j];
            if (overflowed) {
              v = 0;
              for (int r = 0; r < n; ++r) v += centred(r, i0 + g) * centred(r, i0 + j);
            }
            p[(size_t)(i0 + g) * D + i0 + j] += v;
            if (j != g) p[(size_t)(i0 + j) * D + i0 + g] += v;
          }
      }
    }
  }
}

}  // namespace cpu
}  // namespace lukv
