// Query statistics for the expected-attention scorer (QueryStatistics.add in TypeScript).
#pragma once
#include <cstdint>

namespace lukv {
namespace cpu {

// Adds rows [first, tokens) of queries [tokens, queryHeads, headDim] to every head's running
// float64 mean (`mean`, [queryHeads, headDim], over `count` rows so far) and, when m2 is not null,
// its centred sum of products m2 ([queryHeads, headDim, headDim], the full symmetric matrix:
// sum over rows of (q - mean)(q - mean)^T). Blocks of rows are centred on their own mean, their
// products run through the SIMD dot-product kernel in float32, and each block is merged into the
// running sums in float64 (Chan, Golub and LeVeque's update), so neither a large common offset nor
// an outlying row makes the covariance cancel.
void accumulateQueryStatistics(const float* queries, int first, int tokens, int queryHeads, int headDim, int64_t count,
                               double* mean, double* m2);

}  // namespace cpu
}  // namespace lukv
