// Writing K/V into device pages: append (rows scattered to (page, slot) destinations, f32
// converted to the cache dtype or raw 16-bit words copied) and whole-page copies (copy-on-write
// of pages shared with forks). The page bookkeeping is core/page_table's (appendToHeads).
#pragma once
#include <cstdint>
#include <vector>

#include "../core/backend.h"
#include "layout.h"
#include "pool.h"
#include "runtime.h"
#include "workspace.h"

namespace lukv {
namespace cuda {

struct AppendBatch {
  PoolView pool;
  int kvHeads = 0;
  int rows = 0;
  const void* keys = nullptr;     // device [rows, kvHeads, headDim], 16-byte aligned
  const void* values = nullptr;
  InputKind kind = InputKind::F32;
  const int32_t* dest = nullptr;  // host [rows * kvHeads, 2]: (page, slot) of row r of head h at r * kvHeads + h
  cudaStream_t stream = nullptr;
};

void append(const AppendBatch& batch, Workspace& workspace);

// pairs: host [n, 2] of (source page, destination page).
void copyPages(const PoolView& pool, const std::vector<int32_t>& pairs, Workspace& workspace, cudaStream_t stream);

// Cache::append for a device pool: grows every head of the layer by `tokens` (allocating pages,
// copying a shared partly filled last page first), positions pos0 ... pos0 + tokens - 1.
// Fails with OutOfPages before anything changes.
void appendTokens(DevicePool& pool, HeadState* heads, int kvHeads, int tokens, int32_t pos0, const void* keys,
                  const void* values, InputKind kind, Workspace& workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace lukv
