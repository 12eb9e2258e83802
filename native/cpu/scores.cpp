#include "scores.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <vector>

#include "../core/page_table.h"

namespace lukv {
namespace cpu {

namespace {

// Mean over query rows of the softmax attention of each query head of the group:
// out[g * L + j] = (1/rows) * sum_i softmax_i(j), causal by position.
void attentionScores(const HeadScoreArgs& a, std::vector<float>& perHead) {
  const HeadState& h = *a.head;
  const int L = h.length(), G = a.group, D = a.headDim, P = a.pool->pageSize();
  const DType dt = a.pool->dtype();
  const size_t rowBytes = a.pool->rowBytes();
  perHead.assign((size_t)G * L, 0.f);
  // Several rows per pass over the keys, each segment of K serving them all while it is in cache
  // (one pass per row read K from memory once per row); at most 32 MiB of their scores.
  const int block = (int)std::max<int64_t>(1, std::min<int64_t>(8, ((int64_t)32 << 20) / ((int64_t)G * std::max(L, 1) * 4)));
  std::vector<float> s((size_t)block * G * L);
  std::vector<float> q((size_t)block * G * D);
  std::vector<int32_t> visible(block);
  const float scale = a.options->scale;
  for (int i0 = 0; i0 < a.rows; i0 += block) {
    const int rows = std::min(block, a.rows - i0);
    int32_t most = 0;
    for (int r = 0; r < rows; ++r) {
      const float* qi = a.queries + ((size_t)(i0 + r) * a.queryHeads + (size_t)a.headIndex * G) * D;
      for (size_t x = 0; x < (size_t)G * D; ++x) q[(size_t)r * G * D + x] = qi[x] * scale;
      visible[r] = (int32_t)(std::upper_bound(h.positions.begin(), h.positions.end(), a.queryPositions[i0 + r]) - h.positions.begin());
      most = std::max(most, visible[r]);
    }
    // Row r sees the first visible[r] tokens: the same kernel calls as a pass of its own.
    h.forSegments(P, 0, most, [&](int32_t page, int off, int cnt, int32_t t) {
      const uint8_t* K = a.pool->keys(page) + (size_t)off * rowBytes;
      for (int r = 0; r < rows; ++r)
        if (t < visible[r])
          a.kernels->qk(dt, K, std::min<int32_t>(cnt, visible[r] - t), D, q.data() + (size_t)r * G * D, G, s.data() + (size_t)r * G * L + t, L);
    });
    for (int r = 0; r < rows; ++r) {
      const int32_t n = visible[r];
      if (n == 0) continue;
      for (int g = 0; g < G; ++g) {
        float* sg = s.data() + ((size_t)r * G + g) * L;
        float m = a.kernels->maxOf(sg, n);
        float sum = a.kernels->expSum(sg, n, m);
        float w = 1.f / (sum * (float)a.rows);
        float* o = perHead.data() + (size_t)g * L;
        for (int32_t j = 0; j < n; ++j) o[j] += sg[j] * w;
      }
    }
  }
}

// Pools the first `end` scores (the tokens before the observation window) with each other only, as
// SnapKV does; "avg" divides by the full kernel (zero padding at the edges, like torch's
// avg_pool1d). The window's own scores pass through unchanged (they are always kept).
void pool1d(const float* in, float* out, int L, int end, Pooling kind, int kernel) {
  const int r = kernel / 2;
  for (int j = 0; j < L; ++j) {
    if (j >= end) {
      out[j] = in[j];
      continue;
    }
    int lo = std::max(0, j - r), hi = std::min(end - 1, j + r);
    if (kind == Pooling::Max) {
      float m = in[lo];
      for (int x = lo + 1; x <= hi; ++x) m = std::max(m, in[x]);
      out[j] = m;
    } else {
      double s = 0;
      for (int x = lo; x <= hi; ++x) s += in[x];
      out[j] = (float)(s / kernel);
    }
  }
}

// Expected attention of the group's query heads to every token after the sink:
// z = scale * mean'.k + scale^2 / 2 * k' covariance' k (the statistics already rotated to the
// future positions), a softmax over those tokens per query head, the mean over the group, then
// (score + epsilon) * ||v|| with the value norm. The sink tokens' scores are set by the caller.
void expectedAttentionScores(const HeadScoreArgs& a, float* out) {
  const HeadState& h = *a.head;
  const ScoreOptions& o = *a.options;
  const int32_t L = h.length(), sink = std::min<int32_t>(o.sink, L), n = L - sink;
  if (n <= 0) return;
  const int G = a.group, D = a.headDim, P = a.pool->pageSize();
  const DType dt = a.pool->dtype();
  const size_t rowBytes = a.pool->rowBytes();
  // ½·s²·kᵀΣk; where s²/2 overflows float32 (|s| above ~2.6e19), as (s/2)·(s·kᵀΣk).
  const float scale = o.scale, half = 0.5f * scale, half2 = half * scale;
  const bool split = !std::isfinite(half2);
  const float* mean = a.expectedMean + (size_t)a.headIndex * G * D;
  const float* cov = a.expectedCovariance ? a.expectedCovariance + (size_t)a.headIndex * G * D * D : nullptr;
  std::vector<float> q((size_t)G * D);
  for (size_t x = 0; x < q.size(); ++x) q[x] = mean[x] * scale;
  std::vector<float> z((size_t)G * L);
  // Covariance term per page segment, on the keys converted to float32 once.
  std::vector<float> quad(cov ? (size_t)G * P : 0), k(cov ? (size_t)P * D : 0);
  h.forSegments(P, sink, L, [&](int32_t page, int off, int cnt, int32_t t) {
    const uint8_t* K = a.pool->keys(page) + (size_t)off * rowBytes;
    a.kernels->qk(dt, K, cnt, D, q.data(), G, z.data() + t, L);
    if (!cov) return;
    for (int j = 0; j < cnt; ++j)
      for (int d = 0; d < D; ++d) {
        if (dt == DType::F32) k[(size_t)j * D + d] = reinterpret_cast<const float*>(K + (size_t)j * rowBytes)[d];
        else {
          const uint16_t b = reinterpret_cast<const uint16_t*>(K + (size_t)j * rowBytes)[d];
          k[(size_t)j * D + d] = dt == DType::F16 ? f16ToF32(b) : bf16ToF32(b);
        }
      }
    a.kernels->quadForms(k.data(), cnt, D, cov, G, quad.data(), cnt);
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < cnt; ++j) {
        const float qf = quad[(size_t)g * cnt + j];
        z[(size_t)g * L + t + j] += split ? half * (scale * qf) : half2 * qf;
      }
  });
  std::fill(out + sink, out + L, 0.f);
  for (int g = 0; g < G; ++g) {
    float* zg = z.data() + (size_t)g * L + sink;
    const float m = a.kernels->maxOf(zg, n);
    const float w = 1.f / (a.kernels->expSum(zg, n, m) * (float)G);
    for (int32_t j = 0; j < n; ++j) out[sink + j] += zg[j] * w;
  }
  if (!o.expected.valueNorm) return;
  std::vector<float> norms(L);
  h.forSegments(P, sink, L, [&](int32_t page, int off, int cnt, int32_t t) {
    a.kernels->rowNorms(dt, a.pool->values(page) + (size_t)off * rowBytes, cnt, D, norms.data() + t);
  });
  const float eps = (float)o.expected.epsilon;
  for (int32_t j = sink; j < L; ++j) out[j] = (out[j] + eps) * norms[j];
}

}  // namespace

void scoreHead(const HeadScoreArgs& a, float* out) {
  const HeadState& h = *a.head;
  const int L = h.length(), D = a.headDim, P = a.pool->pageSize();
  const DType dt = a.pool->dtype();
  const size_t rowBytes = a.pool->rowBytes();
  const ScoreOptions& o = *a.options;
  if (L == 0) return;
  switch (o.scorer) {
    case Scorer::SnapKV:
    case Scorer::TOVA: {
      std::vector<float> perHead;
      attentionScores(a, perHead);
      const int G = a.group;
      if (o.pooling != Pooling::None && o.kernel > 1) {
        // Pooling covers the tokens before the recent window and before the first observation
        // query (however many tokens decoding has appended since): the scores of tokens that are
        // kept anyway never spread to the ones eviction chooses among. TOVA observes one query,
        // so for it the window is the nearer bound.
        const int observed = a.rows > 0 ? (int)(std::lower_bound(h.positions.begin(), h.positions.end(), a.queryPositions[0]) - h.positions.begin()) : L;
        const int end = std::min(observed, std::max(0, L - o.window));
        std::vector<float> tmp(L);
        for (int g = 0; g < G; ++g) {
          pool1d(perHead.data() + (size_t)g * L, tmp.data(), L, end, o.pooling, o.kernel);
          std::copy(tmp.begin(), tmp.end(), perHead.begin() + (size_t)g * L);
        }
      }
      for (int j = 0; j < L; ++j) {
        float v = perHead[j];
        for (int g = 1; g < G; ++g) v = o.groupMax ? std::max(v, perHead[(size_t)g * L + j]) : v + perHead[(size_t)g * L + j];
        out[j] = o.groupMax ? v : v / (float)G;
      }
      break;
    }
    case Scorer::KeyDiff: {
      // -cos(k_j / |k_j|, mean of k / |k|): the norms, then the mean unit key (summed in double,
      // a row converted at a time), then every key against it through the qk kernel.
      std::vector<float> norms(L), row32(D), anchor(D, 0.f);
      h.forSegments(P, 0, L, [&](int32_t page, int off, int cnt, int32_t t) {
        a.kernels->rowNorms(dt, a.pool->keys(page) + (size_t)off * rowBytes, cnt, D, norms.data() + t);
      });
      auto readRow = [&](int32_t t) {
        const uint8_t* row = a.pool->keys(h.pages[t / P]) + (size_t)(t % P) * rowBytes;
        if (dt == DType::F32) std::memcpy(row32.data(), row, (size_t)D * sizeof(float));
        else if (dt == DType::F16)
          for (int d = 0; d < D; ++d) row32[d] = f16ToF32(reinterpret_cast<const uint16_t*>(row)[d]);
        else
          for (int d = 0; d < D; ++d) row32[d] = bf16ToF32(reinterpret_cast<const uint16_t*>(row)[d]);
      };
      // Rows of norm below 2^-80 (whose float norm may be subnormal, and whose products with the
      // mean unit key would be) become unit rows through their norm in double, in place.
      const float kSmall = 0x1p-80f;
      auto unitSmallRow = [&]() {
        double n2 = 0;
        for (int d = 0; d < D; ++d) n2 += (double)row32[d] * row32[d];
        const double n = std::sqrt(n2);
        for (int d = 0; d < D; ++d) row32[d] = n > 0 ? (float)(row32[d] / n) : 0.f;
      };
      std::vector<double> mean(D, 0.0);
      for (int32_t t = 0; t < L; ++t) {
        readRow(t);
        const float n = norms[t];
        if (!(n >= kSmall)) {
          if (n == n) unitSmallRow();  // a NaN norm (NaN keys, checkFinite off) stays NaN
          else std::fill(row32.begin(), row32.end(), n);
          for (int d = 0; d < D; ++d) mean[d] += (double)row32[d];
          continue;
        }
        const float inv = 1.f / n;
        for (int d = 0; d < D; ++d) mean[d] += (double)(row32[d] * inv);
      }
      double an = 0;
      for (int d = 0; d < D; ++d) {
        anchor[d] = (float)(mean[d] / L);
        an += (double)anchor[d] * anchor[d];
      }
      const float invAnchor = an > 0 ? (float)(1.0 / std::sqrt(an)) : 0.f;
      h.forSegments(P, 0, L, [&](int32_t page, int off, int cnt, int32_t t) {
        a.kernels->qk(dt, a.pool->keys(page) + (size_t)off * rowBytes, cnt, D, anchor.data(), 1, out + t, cnt);
      });
      for (int32_t t = 0; t < L; ++t) {
        const float n = norms[t];
        if (n >= kSmall || n != n) {
          out[t] = -(out[t] * (1.f / n)) * invAnchor;
          continue;
        }
        readRow(t);
        unitSmallRow();
        float dot = 0;
        for (int d = 0; d < D; ++d) dot += row32[d] * anchor[d];
        out[t] = -dot * invAnchor;
      }
      break;
    }
    case Scorer::KNorm: {
      h.forSegments(P, 0, L, [&](int32_t page, int off, int cnt, int32_t t) {
        a.kernels->rowNorms(dt, a.pool->keys(page) + (size_t)off * rowBytes, cnt, D, out + t);
      });
      for (int32_t t = 0; t < L; ++t) out[t] = -out[t];
      break;
    }
    case Scorer::H2O:
      std::copy(a.accumulated, a.accumulated + L, out);
      break;
    case Scorer::Streaming:
      // Counted back from the layer's newest position (see ScoreRequest::newest).
      for (int32_t t = 0; t < L; ++t) out[t] = (float)(h.positions[t] - a.newest);
      break;
    case Scorer::Random:
      for (int32_t t = 0; t < L; ++t) out[t] = randomScore(o.seed, (uint32_t)a.layer, (uint32_t)a.headIndex, (uint32_t)h.positions[t]);
      break;
    case Scorer::ExpectedAttention:
      expectedAttentionScores(a, out);
      break;
  }
}

}  // namespace cpu
}  // namespace lukv
