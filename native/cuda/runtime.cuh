// The CUDA implementation of the runtime interface (runtime.h). Include from .cu files only.
#pragma once
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "check.h"
#include "runtime.h"
#include "workspace.h"

namespace lukv {
namespace cuda {

// Multiprocessors of the current device (asked once per device).
int deviceSmCount();
// Blocks of `kernel` resident per multiprocessor at `threads` threads (asked once per device).
int cachedResidentBlocks(const void* kernel, int threads);

class CudaRuntime {
 public:
  CudaRuntime(Workspace& ws, cudaStream_t stream) : ws_(&ws), stream_(stream) {}
  // Launches only (a prepared call): no workspace to allocate from.
  explicit CudaRuntime(cudaStream_t stream) : ws_(nullptr), stream_(stream) {}

  int smCount() const { return deviceSmCount(); }

  template <class P>
  int residentBlocks(void (*kernel)(P), int threads) const {
    return cachedResidentBlocks(reinterpret_cast<const void*>(kernel), threads);
  }

  // Pageable source: the copy is staged before this returns, so `bytes` may be freed after.
  const uint8_t* upload(const std::vector<uint8_t>& bytes) {
    if (bytes.empty()) return nullptr;
    uint8_t* d = workspace().meta(bytes.size());
    LUKV_CUDA_CHECK(cudaMemcpyAsync(d, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream_));
    return d;
  }

  uint8_t* scratch(size_t bytes) { return workspace().scratch(bytes); }
  int32_t* counters(size_t count) { return workspace().counters(count); }

  void toDevice(void* dst, const void* src, size_t bytes) {
    if (bytes) LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }

  void deviceCopy(void* dst, const void* src, size_t bytes) {
    if (bytes) LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }

  template <class P>
  void launch(void (*kernel)(P), dim3 grid, dim3 block, const P& params, const char* name) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    P copy = params;
    void* args[] = {&copy};
    cudaError_t e = cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, args, 0, stream_);
    if (e != cudaSuccess) throwCudaError(e, (std::string("launch of ") + name).c_str(), __FILE__, __LINE__);
    checkLaunch(stream_, name, __FILE__, __LINE__);
  }

  cudaStream_t stream() const { return stream_; }

 private:
  Workspace& workspace() {
    if (ws_ == nullptr) throw Error(ErrorCode::Internal, "CUDA runtime without a workspace");
    return *ws_;
  }
  Workspace* ws_;
  cudaStream_t stream_;
};

}  // namespace cuda
}  // namespace lukv
