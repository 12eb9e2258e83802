#include "expected_attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "errors.h"

namespace lukv {

namespace {
std::string str(int64_t v) { return std::to_string(v); }

// y = R̄ x for one vector of headDim elements read and written with a stride (rotate-half form:
// the pair (i, i + half) turns by the angle of frequency i).
void rotate(const double* x, size_t stride, const std::vector<double>& c, const std::vector<double>& s, double* y) {
  const size_t half = c.size();
  for (size_t i = 0; i < half; ++i) {
    const double a = x[i * stride], b = x[(i + half) * stride];
    y[i * stride] = c[i] * a - s[i] * b;
    y[(i + half) * stride] = c[i] * b + s[i] * a;
  }
}
}  // namespace

RotatedStatistics rotateStatistics(const ExpectedAttentionOptions& o, int layer, int queryHeads, int headDim,
                                   int32_t promptLength) {
  const size_t D = (size_t)headDim, half = D / 2, Q = (size_t)queryHeads;
  const bool hasMean = (size_t)layer < o.mean.size() && !o.mean[layer].empty();
  if (!hasMean)
    throwInvalid("Expected query statistics for layer " + str(layer) +
                 " in expectedAttention.statistics but the layer has none (add its prompt's queries)");
  if (o.mean[layer].size() != Q * D)
    throwInvalid("Expected a query mean of " + str((int64_t)(Q * D)) + " values (queryHeads x headDim) for layer " +
                 str(layer) + " but received " + str((int64_t)o.mean[layer].size()));
  if (o.useCovariance && ((size_t)layer >= o.covariance.size() || o.covariance[layer].size() != Q * D * D))
    throwInvalid("Expected a query covariance of " + str((int64_t)(Q * D * D)) +
                 " values (queryHeads x headDim x headDim) for layer " + str(layer));
  if (o.inverseFrequencies.size() != half)
    throwInvalid("Expected " + str((int64_t)half) + " RoPE inverse frequencies (headDim / 2) but received " +
                 str((int64_t)o.inverseFrequencies.size()));
  if (o.futurePositions < 1) throwInvalid("Expected futurePositions of at least 1 but received " + str(o.futurePositions));

  // The rotation's mean over the future positions: cos and sin of every frequency, averaged.
  std::vector<double> c(half, 0.0), s(half, 0.0);
  for (size_t i = 0; i < half; ++i) {
    const double w = o.inverseFrequencies[i];
    for (int p = 0; p < o.futurePositions; ++p) {
      const double angle = (double)(promptLength + p) * w;
      c[i] += std::cos(angle);
      s[i] += std::sin(angle);
    }
    c[i] /= o.futurePositions;
    s[i] /= o.futurePositions;
  }

  RotatedStatistics r;
  r.mean.resize(Q * D);
  std::vector<double> y(D);
  for (size_t q = 0; q < Q; ++q) {
    rotate(o.mean[layer].data() + q * D, 1, c, s, y.data());
    for (size_t i = 0; i < D; ++i) r.mean[q * D + i] = (float)y[i];
  }
  if (o.useCovariance) {
    r.covariance.resize(Q * D * D);
    std::vector<double> a(D * D), b(D * D);
    for (size_t q = 0; q < Q; ++q) {
      const double* sigma = o.covariance[layer].data() + q * D * D;
      // A = R̄ Σ (every column turned), then A R̄ᵀ (every row of A turned).
      for (size_t col = 0; col < D; ++col) rotate(sigma + col, D, c, s, a.data() + col);
      for (size_t row = 0; row < D; ++row) rotate(a.data() + row * D, 1, c, s, b.data() + row * D);
      for (size_t i = 0; i < D * D; ++i) r.covariance[q * D * D + i] = (float)b[i];
    }
  }
  return r;
}

void fillSinkScores(float* scores, int32_t length, int sink) {
  const int32_t front = std::min<int32_t>(sink, length);
  const float top = front < length ? *std::max_element(scores + front, scores + length) : 0.f;
  std::fill(scores, scores + front, top);
}

}  // namespace lukv
