#include "statistics.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.h"

namespace lukv {
namespace cpu {

void accumulateQueryStatistics(const float* queries, int first, int tokens, int queryHeads, int headDim, int64_t count,
                               double* mean, double* m2) {
  const int Q = queryHeads, D = headDim;
  // Rows per float32 block: short enough that a block's dot products stay exact to ~1e-6.
  constexpr int kBlock = 256;
  const Kernels* k = m2 ? selectKernels("auto") : nullptr;
  std::vector<float> columns, block;
  std::vector<double> blockMean(D), delta(D), largest(D);
  for (int r0 = first; r0 < tokens; r0 += kBlock) {
    const int n = std::min(kBlock, tokens - r0);
    const double before = (double)count, after = before + n;
    for (int h = 0; h < Q; ++h) {
      const auto q = [&](int r, int i) { return (double)queries[((size_t)(r0 + r) * Q + h) * D + i]; };
      // The block's own mean, in float64: its rows are centred on it, so the products below
      // carry only the block's spread (no large common part to cancel later).
      std::fill(blockMean.begin(), blockMean.end(), 0.0);
      for (int r = 0; r < n; ++r)
        for (int i = 0; i < D; ++i) blockMean[i] += q(r, i);
      for (int i = 0; i < D; ++i) blockMean[i] /= n;
      double* mu = mean + (size_t)h * D;
      for (int i = 0; i < D; ++i) {
        delta[i] = blockMean[i] - mu[i];
        mu[i] += delta[i] * (n / after);
      }
      if (!m2) continue;
      // The head's centred rows as columns: columns[i * n + r] = q[r][i] - blockMean[i].
      columns.assign((size_t)D * n, 0.f);
      std::fill(largest.begin(), largest.end(), 0.0);
      for (int r = 0; r < n; ++r)
        for (int i = 0; i < D; ++i) {
          const double x = q(r, i) - blockMean[i];
          columns[(size_t)i * n + r] = (float)x;
          largest[i] = std::max(largest[i], std::fabs(x));
        }
      // The smallest non-zero spread of the dimensions from `from` on: a product of two dimensions
      // whose spreads multiply below about 2^-100 nears float32's subnormal range (under 1.2e-38)
      // and loses its digits, so such a band is summed in float64 from the rows.
      const auto smallest = [&](int from, int to) {
        double m = INFINITY;
        for (int i = from; i < to; ++i)
          if (largest[i] > 0) m = std::min(m, largest[i]);
        return m;
      };
      // Chan et al.'s merge of two sets' centred sums of products: the block's, plus
      // delta delta^T x before x n / after for the move between the two means.
      const double weight = before * n / after;
      double* p = m2 + (size_t)h * D * D;
      // Dimensions i0 .. i0 + 15 against every dimension j >= i0 (the upper triangle, in bands of
      // 16 "queries" of length n over D - i0 "keys"), mirrored into the lower one.
      block.resize((size_t)16 * D);
      const auto centred = [&](int r, int i) { return q(r, i) - blockMean[i]; };
      for (int i0 = 0; i0 < D; i0 += 16) {
        const int rows = std::min(16, D - i0);
        const float* band = columns.data() + (size_t)i0 * n;
        k->qk(DType::F32, band, D - i0, n, band, rows, block.data(), D - i0);
        // Values past about 1e18 overflow float32 products (or a block's sum of them) although the
        // statistics fit: such a band is summed again in float64 from the rows (as a tiny one is).
        const bool tiny = smallest(i0, i0 + rows) * smallest(i0, D) < 0x1p-100;
        const bool inDouble = tiny || std::any_of(block.begin(), block.begin() + (size_t)rows * (D - i0), [](float v) { return !std::isfinite(v); });
        for (int g = 0; g < rows; ++g)
          for (int j = g; j < D - i0; ++j) {
            double v = block[(size_t)g * (D - i0) + j];
            if (inDouble) {
              v = 0;
              for (int r = 0; r < n; ++r) v += centred(r, i0 + g) * centred(r, i0 + j);
            }
            v += delta[i0 + g] * delta[i0 + j] * weight;
            p[(size_t)(i0 + g) * D + i0 + j] += v;
            if (j != g) p[(size_t)(i0 + j) * D + i0 + g] += v;
          }
      }
    }
    count += n;
  }
}

}  // namespace cpu
}  // namespace lukv
