// CPU scorers: one score per kept token of one (layer, KV head); higher = keep.
#pragma once
#include <cstdint>

#include "../core/compress.h"
#include "../core/pool.h"
#include "kernels.h"

namespace lukv {
struct HeadState;
namespace cpu {

struct HeadScoreArgs {
  const PagePool* pool;
  const Kernels* kernels;
  const HeadState* head;
  int layer, headIndex;
  int group, headDim, queryHeads;
  // Query rows for the attention-based scorers, [rows, queryHeads, headDim], and their positions.
  const float* queries;
  const int32_t* queryPositions;
  int rows;
  const float* accumulated;  // h2o: attention mass per kept token
  int32_t newest = 0;        // streaming: the newest position appended to the layer (ScoreRequest)
  // expected-attention: the layer's rotated query statistics (see ScoreRequest).
  const float* expectedMean;
  const float* expectedCovariance;
  const ScoreOptions* options;
};

// Writes head->length() scores to out.
void scoreHead(const HeadScoreArgs& a, float* out);

}  // namespace cpu
}  // namespace lukv
