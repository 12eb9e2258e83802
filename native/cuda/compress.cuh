// Compaction kernel and its host orchestration (generic over the runtime).
#pragma once
#include <algorithm>
#include <string>

#include "compress.h"
#include "device.h"

namespace lukv {
namespace cuda {

// grid.x = head, grid.y strides over the head's (kept row, 16-byte vector) pairs.
__global__ void __launch_bounds__(256) compactKernel(const CompactParams p) {
  const CompactHeadDesc h = p.heads[blockIdx.x];
  const int vecs = (int)(p.pool.rowBytes / 16);
  const int64_t total = (int64_t)h.keptCount * vecs;
  const int32_t* oldPages = p.pageIndices + h.oldPageBegin;
  const int32_t* newPages = p.pageIndices + h.newPageBegin;
  const int64_t vOffset = (int64_t)p.pool.pageSize * p.pool.rowBytes;
  for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.y * blockDim.x) {
    const int32_t j = (int32_t)(i / vecs);
    const int vi = (int)(i - (int64_t)j * vecs);
    const int32_t src = p.kept[h.keptBegin + j];
    // Plain loads: this launch writes the pool (other pages), so no read-only cache path.
    const uint8_t* s = keyRow(p.pool, oldPages, p.pageShift, src) + vi * 16;
    uint8_t* d = const_cast<uint8_t*>(keyRow(p.pool, newPages, p.pageShift, j)) + vi * 16;
    *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
    *reinterpret_cast<uint4*>(d + vOffset) = *reinterpret_cast<const uint4*>(s + vOffset);
    if (vi == 0 && h.massIn != nullptr) h.massOut[j] = h.massIn[src];
  }
}

template <class RT>
void runCompact(RT& rt, const PoolView& pool, const std::vector<CompactHeadInput>& heads) {
  for (size_t i = 0; i < heads.size(); ++i)
    if (heads[i].massIn != nullptr && heads[i].massIn == heads[i].massOut)
      throwInvalid("compacted head " + std::to_string(i) + ": mass must be gathered into a different array");
  const CompactPlan plan = planCompact(heads, pool);
  if (plan.heads.empty() || plan.maxKept == 0) return;
  if (plan.heads.size() > 0x7fffffffu) throwInvalid("too many heads in one compaction");
  Arena arena;
  const size_t oKept = arena.add(plan.kept), oPages = arena.add(plan.pageIndices), oHeads = arena.add(plan.heads);
  const uint8_t* meta = rt.upload(arena.bytes());
  CompactParams p{};
  p.pool = pool;
  p.pageShift = pageShiftOf(pool.pageSize);
  p.kept = reinterpret_cast<const int32_t*>(meta + oKept);
  p.pageIndices = reinterpret_cast<const int32_t*>(meta + oPages);
  p.heads = reinterpret_cast<const CompactHeadDesc*>(meta + oHeads);
  p.numHeads = (int32_t)plan.heads.size();
  const int64_t perHead = (int64_t)plan.maxKept * (pool.rowBytes / 16);
  const unsigned ys = (unsigned)std::max<int64_t>(1, std::min<int64_t>(65535, (perHead + 255) / 256));
  rt.launch(compactKernel, dim3((unsigned)plan.heads.size(), ys), dim3(256), p, "compact");
}

// The gather with the page table's bookkeeping (takeFreshPages / commitHead), for any pool with
// PagePool's allocator interface; optional per-token floats (massIn[i] -> massOut[i], device,
// distinct) move with the rows.
template <class RT, class Pool>
void runCompactSequenceHeads(RT& rt, Pool& pool, const PoolView& view, const std::vector<HeadState*>& heads,
                             const std::vector<std::vector<int32_t>>& kept, const std::vector<const float*>& massIn,
                             const std::vector<float*>& massOut) {
  if (kept.size() != heads.size()) throwInvalid("one kept list per head is needed");
  std::vector<CompactHead> round = takeFreshPages(heads.data(), kept, view.pageSize, pool);
  const std::vector<CompactHeadInput> in = compactInputs(round, massIn, massOut);
  try {
    runCompact(rt, view, in);
  } catch (...) {
    for (const CompactHead& c : round)
      for (int32_t p : c.to) pool.release(p);
    throw;
  }
  // Same stream: anything later written into the released pages runs after the gather.
  for (const CompactHead& c : round) commitHead(*heads[c.index], c, pool, nullptr);
}

}  // namespace cuda
}  // namespace lukv
