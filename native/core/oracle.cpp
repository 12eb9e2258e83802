// The profiling oracle of LU-KV: for every context token, the largest attention weight any later
// query of the group gives it, times the norm of what the token writes to the residual stream
// (||v_j W_O(q)||). Recording fixes the context and the observation window at its start.
#include <algorithm>
#include <cmath>

#include "cache.h"

namespace lukv {

void Cache::recordOracle(int32_t seqId, const std::vector<std::vector<float>>& wo, bool normalize) {
  Held h = hold(seqId, true);
  Sequence& seq = *h.seq;
  const int H = cfg_.kvHeads, Q = cfg_.queryHeads, D = cfg_.headDim, G = Q / H;
  const size_t NH = (size_t)cfg_.layers * H;
  std::vector<int32_t> tokens(NH);
  for (size_t i = 0; i < NH; ++i) tokens[i] = seq.heads[i].length();
  std::vector<std::vector<float>> weight((size_t)cfg_.layers * Q);
  // The value rows as f32, read once per head, for the layers that have W_O.
  std::vector<std::vector<float>> values(NH);
  for (int l = 0; l < cfg_.layers; ++l) {
    if (wo.empty() || wo[l].empty()) continue;
    for (int h = 0; h < H; ++h) {
      const size_t i = (size_t)l * H + h;
      values[i].resize((size_t)tokens[i] * D);
      backend_->readRows(seq.heads[i], tokens[i], true, values[i].data());
    }
  }
  backend_->parallelFor((int64_t)cfg_.layers * Q, [&](int64_t idx) {
    const int l = (int)(idx / Q), q = (int)(idx % Q), h = q / G;
    const HeadState& hs = seq.heads[(size_t)l * H + h];
    const int32_t n = tokens[(size_t)l * H + h];
    std::vector<float>& w = weight[idx];
    w.resize(n);
    if (wo.empty() || wo[l].empty()) {
      backend_->valueNorms(hs, n, w.data());
      return;
    }
    // ||v W_q||^2 = v^T (W_q W_q^T) v with W_q the query head's D rows of W_O.
    const int hidden = (int)(wo[l].size() / ((size_t)Q * D));
    const float* Wq = wo[l].data() + (size_t)q * D * hidden;
    std::vector<double> M((size_t)D * D);
    for (int a = 0; a < D; ++a)
      for (int b = a; b < D; ++b) {
        double s = 0;
        for (int c = 0; c < hidden; ++c) s += (double)Wq[(size_t)a * hidden + c] * Wq[(size_t)b * hidden + c];
        M[(size_t)a * D + b] = M[(size_t)b * D + a] = s;
      }
    const float* V = values[(size_t)l * H + h].data();
    for (int32_t t = 0; t < n; ++t) {
      const float* v = V + (size_t)t * D;
      double s = 0;
      for (int a = 0; a < D; ++a) {
        double r = 0;
        for (int b = 0; b < D; ++b) r += M[(size_t)a * D + b] * v[b];
        s += r * v[a];
      }
      w[t] = (float)std::sqrt(std::max(0.0, s));
    }
  });
  if (normalize) {
    for (int l = 0; l < cfg_.layers; ++l) {
      double sum = 0;
      for (int q = 0; q < Q; ++q)
        for (float x : weight[(size_t)l * Q + q]) sum += x;
      if (sum > 0)
        for (int q = 0; q < Q; ++q)
          for (float& x : weight[(size_t)l * Q + q]) x = (float)(x / sum);
    }
  }
  seq.oracleTokens = std::move(tokens);
  seq.oracleWeight = std::move(weight);
  seq.oracle.assign(NH, {});
  for (size_t i = 0; i < NH; ++i) seq.oracle[i].assign(seq.oracleTokens[i], 0.f);
  seq.frozenObserved = seq.observed;
  seq.frozen = true;
  seq.recording = true;
}

void Cache::stopOracle(int32_t seqId) {
  Held h = hold(seqId, false);
  Sequence& seq = *h.seq;
  seq.recording = false;
  seq.frozen = false;
  seq.oracleWeight.clear();
}

std::vector<std::vector<float>> Cache::oracle(int32_t seqId, int layer) const {
  Held h = hold(seqId, false);
  const Sequence& seq = *h.seq;
  if (seq.oracle.empty()) throwInvalid("the sequence has no oracle: call seq.recordOracle() before decoding");
  const int H = cfg_.kvHeads;
  return std::vector<std::vector<float>>(seq.oracle.begin() + (size_t)layer * H, seq.oracle.begin() + (size_t)(layer + 1) * H);
}

}  // namespace lukv
