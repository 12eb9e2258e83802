// Expected Attention: the query statistics rotated to the positions after the prompt (shared by
// every backend), and the sink rule applied to the scores a backend returns.
#pragma once
#include <cstdint>
#include <vector>

#include "compress.h"

namespace lukv {

// One layer's query statistics seen from the next `futurePositions` positions: mean' = R̄ mean and
// covariance' = R̄ covariance R̄ᵀ per query head, with R̄ the rotate-half RoPE rotation averaged over
// the positions promptLength .. promptLength + futurePositions - 1.
struct RotatedStatistics {
  std::vector<float> mean;        // [queryHeads, headDim]
  std::vector<float> covariance;  // [queryHeads, headDim, headDim]; empty without the covariance term
};

// Throws InvalidArgument when the layer has no statistics or their shapes do not fit.
RotatedStatistics rotateStatistics(const ExpectedAttentionOptions& o, int layer, int queryHeads, int headDim,
                                   int32_t promptLength);

// The first `sink` tokens of a head take no part in the softmax; like kvpress they score the
// head's highest score (all zeros when the head holds only sink tokens).
void fillSinkScores(float* scores, int32_t length, int sink);

}  // namespace lukv
