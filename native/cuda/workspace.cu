#include "check.h"
#include "runtime.cuh"
#include "workspace.h"

#include <atomic>
#include <map>
#include <mutex>
#include <tuple>

namespace lukv {
namespace cuda {

Workspace::~Workspace() { release(); }

void Workspace::release() {
  // Errors cannot be reported from a destructor; a failed free leaks at worst.
  if (meta_.ptr) cudaFree(meta_.ptr);
  if (scratch_.ptr) cudaFree(scratch_.ptr);
  if (counters_.ptr) cudaFree(counters_.ptr);
  meta_ = Buffer{};
  scratch_ = Buffer{};
  counters_ = Buffer{};
}

uint8_t* Workspace::grow(Buffer& b, size_t bytes) {
  if (bytes <= b.size && b.ptr) return b.ptr;
  // Grow by half again so a slowly growing sequence does not reallocate every step.
  size_t want = bytes + bytes / 2;
  want = (want + 4095) / 4096 * 4096;
  if (b.ptr) {
    // Work queued on any stream may still read the old buffer.
    LUKV_CUDA_CHECK(cudaDeviceSynchronize());
    LUKV_CUDA_CHECK(cudaFree(b.ptr));
    b = Buffer{};
  }
  void* p = nullptr;
  LUKV_CUDA_CHECK(cudaMalloc(&p, want));
  b.ptr = static_cast<uint8_t*>(p);
  b.size = want;
  return b.ptr;
}

int32_t* Workspace::counters(size_t count) {
  const size_t bytes = count * sizeof(int32_t);
  if (bytes <= counters_.size && counters_.ptr) return reinterpret_cast<int32_t*>(counters_.ptr);
  uint8_t* p = grow(counters_, bytes);
  // cudaMemset is asynchronous and on the legacy stream: wait, so that work on any stream
  // (non-blocking ones too) sees the zeros.
  LUKV_CUDA_CHECK(cudaMemset(p, 0, counters_.size));
  LUKV_CUDA_CHECK(cudaDeviceSynchronize());
  return reinterpret_cast<int32_t*>(p);
}

int deviceSmCount() {
  static std::atomic<int> cached[64];
  int dev = 0;
  LUKV_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64 && cached[dev].load() > 0) return cached[dev].load();
  int n = 0;
  LUKV_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  if (dev >= 0 && dev < 64) cached[dev].store(n);
  return n;
}

int cachedResidentBlocks(const void* kernel, int threads) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int>, int> known;
  int dev = 0;
  LUKV_CUDA_CHECK(cudaGetDevice(&dev));
  const auto key = std::make_tuple(dev, kernel, threads);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = known.find(key);
    if (it != known.end()) return it->second;
  }
  int n = 0;
  LUKV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, 0));
  n = n > 0 ? n : 1;
  std::lock_guard<std::mutex> lock(mu);
  known[key] = n;
  return n;
}

}  // namespace cuda
}  // namespace lukv
