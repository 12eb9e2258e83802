// Query statistics for the expected-attention scorer (QueryStatistics.add in TypeScript).
#pragma once
#include <cstdint>

namespace lukv {
namespace cpu {

// Adds rows [first, tokens) of queries [tokens, queryHeads, headDim] to every head's float64 sums
// taken around `shift` ([queryHeads, headDim]): sum += q - shift and, when products is not null,
// products ([queryHeads, headDim, headDim], the full symmetric matrix) += (q - shift)(q - shift)^T.
// The products run through the SIMD dot-product kernel in float32 over blocks of rows and are
// summed in float64 across blocks.
void accumulateQueryStatistics(const float* queries, int first, int tokens, int queryHeads, int headDim,
                               const double* shift, double* sum, double* products);

}  // namespace cpu
}  // namespace lukv
