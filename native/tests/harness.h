// The comparison harness: every CUDA kernel against its CPU twin on the same seeded random
// inputs. A Backend runs the CUDA side either on a GPU (gpu_backend.cpp) or in the CPU emulator
// (emu/emu_backend.cpp); the test cases and the references are shared.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../core/cache.h"
#include "../cuda/attention.h"
#include "../cuda/compress.h"
#include "../cuda/scores.h"

namespace lukv {
namespace test {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Device memory (host memory in the emulator), filled with 0xFF bytes: NaN as floats.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* p) = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void sync() = 0;

  // The backend's page pool (replaced by newPool) and its host-side page allocator.
  virtual void newPool(int64_t numPages, int pageSize, int headDim, DType dtype) = 0;
  virtual cuda::PoolView pool() = 0;
  virtual void retain(int32_t page) = 0;
  virtual int64_t freePages() = 0;

  virtual void appendTokens(HeadState* heads, int kvHeads, int tokens, int32_t pos0, const void* keys,
                            const void* values, InputKind kind) = 0;
  virtual void compact(const std::vector<HeadState*>& heads, const std::vector<std::vector<int32_t>>& kept,
                       const std::vector<const float*>& massIn, const std::vector<float*>& massOut) = 0;
  virtual void attend(const cuda::AttendBatch& batch, const cuda::AttendOptions& options) = 0;
  virtual void scores(const cuda::ScoreBatch& batch) = 0;
};

struct Options {
  uint64_t seed = 1;
  bool full = true;          // GPU sizes (lengths to 32K, batch 16); false = emulator sizes
  std::string only;          // run only the groups whose name contains this
  bool verbose = false;
};

// Returns the number of failed checks; prints one line per check and a summary.
int runKernelTests(Backend& backend, const Options& options);
// Planner tests that need no device. Returns the number of failures.
int runPlanTests(uint64_t seed);

}  // namespace test
}  // namespace lukv
