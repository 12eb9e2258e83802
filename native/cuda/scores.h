// Scoring on the device: one score per kept token of each (sequence, KV head), higher = keep.
// Mirrors native/cpu/scores.cpp: snapkv / tova (softmax attention of observation queries, mean
// over query rows, optional max/avg pooling, GQA mean or max), knorm (-||k||), keydiff
// (-cos(k_j, mean unit key)); expected-attention (the logits of the rotated query statistics,
// softmax over the non-sink tokens, GQA mean, value norm); h2o copies the device mass; streaming and random are filled from
// the host. Per-head top-b selection runs on the host over the scores copied back.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

#include "../core/backend.h"
#include "../core/compress.h"
#include "layout.h"
#include "plan.h"
#include "runtime.h"
#include "workspace.h"

namespace lukv {
namespace cuda {

struct ScoreHeadRef {
  const HeadState* head = nullptr;
  int layer = 0;                           // for the random scorer's hash
  int kvHead = 0;
  int32_t row0 = 0;                        // observation rows (snapkv / tova), global in queries
  int rows = 0;
  const int32_t* queryPositions = nullptr; // [rows] (host)
  const float* mass = nullptr;             // h2o: device [length]
  int32_t newest = 0;                      // streaming: the layer's newest position (ScoreRequest)
  int32_t expectedSlot = 0;                // expected-attention: which layer's statistics
};

struct ScoreBatch {
  PoolView pool;
  int kvHeads = 0, queryHeads = 0;
  std::vector<ScoreHeadRef> heads;
  const float* queries = nullptr;          // device [rows, queryHeads, headDim] observation rows
  int32_t queryRows = 0;
  Scorer scorer = Scorer::SnapKV;
  Pooling pooling = Pooling::None;
  int kernel = 7;
  bool groupMax = false;
  uint32_t seed = 0;
  // Any finite value (0 included); unset, the attention scorers refuse it.
  float scale = std::numeric_limits<float>::quiet_NaN();
  // expected-attention: per slot, the rotated query means [slots, queryHeads, headDim] and
  // covariances [slots, queryHeads, headDim, headDim] (null without the covariance term), device.
  const float* expectedMean = nullptr;
  const float* expectedCovariance = nullptr;
  int sink = 0;
  int window = 0;                          // snapkv / tova: recent tokens, not pooled (see planScores)
  bool valueNorm = true;
  float epsilon = 0;
  float* out = nullptr;                    // device: the heads' scores one after another
  cudaStream_t stream = nullptr;
};

// Pooling half-widths up to this many tokens (kernel <= 2 * kMaxPoolHalo + 1).
constexpr int kMaxPoolHalo = 64;

void scoreHeads(const ScoreBatch& batch, Workspace& workspace);

// Where head i's scores start in batch.out.
std::vector<int64_t> scoreOffsets(const ScoreBatch& batch);

}  // namespace cuda
}  // namespace lukv
