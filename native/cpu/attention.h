// CPU attention over one layer of one or more sequences: GQA, causal by original position, online softmax
// with f32 accumulation, split over (KV head, query rows, token ranges) and reduced.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/page_table.h"
#include "../core/pool.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace lukv {
namespace cpu {

struct AttendArgs {
  const PagePool* pool;
  const Kernels* kernels;
  ThreadPool* threads;
  const HeadState* heads;   // kvHeads heads of the layer
  int kvHeads, queryHeads, headDim;
  int tokens;               // query rows
  const int32_t* queryPositions;  // [tokens], ascending
  const float* queries;     // [tokens, queryHeads, headDim]
  float* out;               // [tokens, queryHeads, headDim]
  float scale;
  Prefetch prefetch = Prefetch::T0;  // how the kernels request rows ahead while streaming
  // Optional, per KV head: attention mass per kept token, to which this call adds each token's
  // softmax weight averaged over the query heads of the group (H2O).
  float* const* mass = nullptr;
  // Optional, per KV head: the profiling oracle, max over query rows and the group's query heads of
  // softmax weight x oracleWeight[query head][token], for the first oracleTokens[head] tokens.
  float* const* oracle = nullptr;
  const float* const* oracleWeight = nullptr;
  const int32_t* oracleTokens = nullptr;
};

// Several calls on one layer (sequences of any lengths; the same pool, kernels, threads and
// prefetch) as one parallel pass over (call, KV head, query rows, token ranges). Each call is split
// as it would be alone, so its output is bit-for-bit that of attend(calls[i]).
void attendBatch(const AttendArgs* calls, size_t count);
inline void attend(const AttendArgs& a) { attendBatch(&a, 1); }

}  // namespace cpu
}  // namespace lukv
