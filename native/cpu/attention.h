// CPU attention over one layer of a sequence: GQA, causal by original position, online softmax
// with f32 accumulation, split over (KV head, query rows, token ranges) and reduced.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/cache.h"

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
};

void attend(const AttendArgs& a);

}  // namespace cpu
}  // namespace lukv
