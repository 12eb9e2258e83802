// The CPU backend: the page pool in host memory, the SIMD kernel tables and the thread pool.
// Its kernels live beside it: attention.cpp, scores.cpp, compress.cpp (compaction), cache.cpp
// (writing, copying and reading rows); native/cuda mirrors them file by file.
#pragma once
#include <memory>

#include "../core/backend.h"
#include "../core/pool.h"
#include "../core/threadpool.h"
#include "kernels.h"

namespace lukv {
namespace cpu {

class CpuBackend : public Backend {
 public:
  explicit CpuBackend(const BackendConfig& config);

  const char* device() const override { return "cpu"; }
  std::string simd() const override { return kernels_->name; }
  std::string prefetch() const override { return prefetchName(prefetch_); }
  int threads() const override { return threads_->threads(); }
  PageAllocator& pages() override { return *pool_; }
  size_t pageBytes() const override { return pool_->pageBytes(); }
  bool compactsInPlace() const override { return true; }
  // Page bytes are only written by the one call that owns them, scratch is per thread, and the
  // thread pool takes concurrent callers.
  bool concurrent() const override { return true; }
  void parallelFor(int64_t n, const std::function<void(int64_t)>& fn) override { threads_->parallelFor(n, fn); }

  void copyPages(const std::vector<int32_t>& pairs) override;
  void writeRows(const AppendPlan& plan, int tokens, int kvHeads, const void* keys, const void* values,
                 InputKind kind) override;
  void attendBatch(const std::vector<AttendRequest>& calls) override;
  void scores(const std::vector<ScoreRequest>& heads, int kvHeads, int queryHeads, const ScoreOptions& options) override;
  void compact(const std::vector<CompactHead>& round) override;
  void readRaw(const HeadState& head, int32_t count, bool values, uint8_t* out) override;
  void valueNorms(const HeadState& head, int32_t count, float* out) override;
  DType dtype() const override { return pool_->dtype(); }
  int headDim() const override { return headDim_; }
  int64_t releaseFreeMemory() override { return pool_->releaseFree(); }

 private:
  std::unique_ptr<PagePool> pool_;
  std::unique_ptr<ThreadPool> threads_;
  const Kernels* kernels_;
  Prefetch prefetch_ = Prefetch::T0;
  int headDim_;
};

}  // namespace cpu
}  // namespace lukv
