// Device compaction: each head's kept rows (ascending token indices) gathered in order into
// FRESH pages. In-place parallel compaction would race (a row read and overwritten in the same
// launch); gathering into new pages lets the host release the old ones afterwards. The CPU twin is
// native/cpu/compress.cpp; the plan (which rows, which pages) is core/page_table's, and scores come
// from scores.h while budgets and selection stay on the host (core/allocation).
#pragma once
#include <cstdint>
#include <vector>

#include "../core/backend.h"
#include "layout.h"
#include "plan.h"
#include "pool.h"
#include "runtime.h"
#include "workspace.h"

namespace lukv {
namespace cuda {

void compactHeads(const PoolView& pool, const std::vector<CompactHeadInput>& heads, Workspace& workspace,
                  cudaStream_t stream);

// The kernels' description of a compaction round planned by the page table (CompactHead), with
// optional per-token floats per head (massIn[c.index] -> massOut[c.index]; empty: none).
inline std::vector<CompactHeadInput> compactInputs(const std::vector<CompactHead>& round,
                                                   const std::vector<const float*>& massIn = {},
                                                   const std::vector<float*>& massOut = {}) {
  std::vector<CompactHeadInput> in;
  for (const CompactHead& c : round) {
    CompactHeadInput x;
    x.oldPages = c.from.data();
    x.oldPageCount = (int64_t)c.from.size();
    x.oldLength = c.length;
    x.kept = c.kept->data();
    x.keptCount = (int32_t)c.kept->size();
    x.newPages = c.to.data();
    x.newPageCount = (int64_t)c.to.size();
    x.massIn = c.index < massIn.size() ? massIn[c.index] : nullptr;
    x.massOut = c.index < massOut.size() ? massOut[c.index] : nullptr;
    in.push_back(x);
  }
  return in;
}

// For a device pool (the kernels' own tests and benchmark; caches go through backend.h): takes
// fresh pages for every head (all or nothing: OutOfPages before anything changes), gathers the
// kept rows, then updates pages and positions and releases the old pages (page_table's
// takeFreshPages and commitHead). A head whose kept list is empty or keeps every token is left unchanged (its mass
// too). Optional mass arrays move with the rows (massIn[i] -> massOut[i], device, distinct).
void compactSequenceHeads(DevicePool& pool, const std::vector<HeadState*>& heads,
                          const std::vector<std::vector<int32_t>>& kept, const std::vector<const float*>& massIn,
                          const std::vector<float*>& massOut, Workspace& workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace lukv
