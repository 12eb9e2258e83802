// The CPU backend's compaction: in place, head by head in parallel.
#include <cstring>

#include "backend.h"

namespace lukv {
namespace cpu {

void CpuBackend::compact(const std::vector<CompactHead>& round) {
  const size_t rowBytes = pool_->rowBytes();
  const int P = pool_->pageSize();
  threads_->parallelFor((int64_t)round.size(), [&](int64_t i) {
    const CompactHead& c = round[i];
    const std::vector<int32_t>& k = *c.kept;
    // In place, rows only move towards the front (k[j] >= j), so copying in order never reads a
    // row that was already overwritten.
    for (size_t j = 0; j < k.size(); ++j) {
      const int32_t src = k[j];
      if (c.inPlace && src == (int32_t)j) continue;
      const int32_t sp = c.from[src / P], dp = c.to[j / P];
      std::memcpy(pool_->keys(dp) + (size_t)(j % P) * rowBytes, pool_->keys(sp) + (size_t)(src % P) * rowBytes, rowBytes);
      std::memcpy(pool_->values(dp) + (size_t)(j % P) * rowBytes, pool_->values(sp) + (size_t)(src % P) * rowBytes, rowBytes);
    }
  });
}

}  // namespace cpu
}  // namespace lukv
