// Options and results of scoring and eviction (compress).
#pragma once
#include <cstdint>
#include <vector>

namespace lukv {

enum class Scorer { SnapKV = 0, KeyDiff = 1, KNorm = 2, TOVA = 3, H2O = 4, Streaming = 5, Random = 6, ExpectedAttention = 7 };
enum class Allocation { Uniform, PyramidKV, AdaKV, LUKV, Explicit };
enum class Pooling { None = 0, Max = 1, Avg = 2 };

// Expected Attention (Devoto et al. 2025, kvpress ExpectedAttentionPress): the statistics of the
// prompt's pre-RoPE queries, and how the scorer turns them into expected attention.
struct ExpectedAttentionOptions {
  // Per layer: the mean [queryHeads, headDim] and (when covariance is on) the covariance
  // [queryHeads, headDim, headDim] of the queries; empty for a layer without statistics.
  std::vector<std::vector<double>> mean, covariance;
  std::vector<double> inverseFrequencies;  // RoPE, headDim / 2
  int futurePositions = 512;               // the rotation is averaged over this many next positions
  bool useCovariance = true;               // include the covariance term
  bool valueNorm = true;                   // (score + epsilon) * ||v||
  double epsilon = 0.02;
};

struct ScoreOptions {
  Scorer scorer = Scorer::SnapKV;
  int window = 32;                 // observation queries (snapkv); also the recent window kept
  Pooling pooling = Pooling::None;
  int kernel = 7;
  bool groupMax = false;           // combine the GQA group by max instead of mean
  bool groupLayer = false;         // then average over the layer's KV heads (TOVA: one score per layer)
  bool valueNorm = false;          // then multiply each score by its token's ||v||
  uint32_t seed = 0;               // random scorer
  float scale = 0.f;               // softmax scale of attention-based scorers
  // Optional observation queries per layer ([rows, queryHeads, headDim]); empty = remembered ones.
  std::vector<std::vector<float>> observation;
  int sink = 4;                    // expected-attention: first tokens left out of the softmax
  ExpectedAttentionOptions expected;
};

struct CompressOptions {
  ScoreOptions score;
  Allocation allocation = Allocation::Uniform;
  double ratio = 0;                // fraction of the current tokens to remove
  std::vector<int32_t> budgets;    // explicit keep counts per (layer, KV head)
  std::vector<double> pruneRatios; // lukv: the profile's prune ratio per (layer, KV head) at `ratio`
  int sink = 4;
  double alpha = 0.2;              // adakv floor, fraction of a head's proportional share
  double beta = 20;                // pyramidkv: top layer keeps 1/beta of the average
};

struct CompressReport {
  std::vector<int32_t> kept;       // tokens kept per (layer, KV head)
  int64_t before = 0, target = 0, total = 0;
  int64_t pagesFreed = 0;
  double ms = 0;
};

// Deterministic per-token hash in [0, 1) for the seeded random scorer.
inline float randomScore(uint32_t seed, uint32_t layer, uint32_t head, uint32_t position) {
  auto mix = [](uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
  };
  uint32_t h = mix(seed ^ 0x9e3779b9u);
  h = mix(h ^ layer);
  h = mix(h ^ (head * 0x85ebca6bu));
  h = mix(h ^ position);
  return (float)(h >> 8) * (1.0f / 16777216.0f);
}

}  // namespace lukv
