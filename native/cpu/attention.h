// CPU attention over one layer of one or more sequences: GQA, causal by original position, online softmax
// with f32 accumulation, split over (KV head, query rows, token ranges) and reduced.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/backend.h"
#include "../core/page_table.h"
#include "../core/pool.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace lukv {
namespace cpu {

// One call: the backend-independent request (core/backend.h) and what the CPU runs it with.
struct AttendArgs : AttendRequest {
  const PagePool* pool = nullptr;
  const Kernels* kernels = nullptr;
  ThreadPool* threads = nullptr;
  int headDim = 0;
  Prefetch prefetch = Prefetch::T0;  // how the kernels request rows ahead while streaming
};

// Several calls on one layer (sequences of any lengths; the same pool, kernels, threads and
// prefetch) as one parallel pass over (call, KV head, query rows, token ranges). Each call is split
// as it would be alone, so its output is bit-for-bit that of attend(calls[i]).
void attendBatch(const AttendArgs* calls, size_t count);
inline void attend(const AttendArgs& a) { attendBatch(&a, 1); }

}  // namespace cpu
}  // namespace lukv
