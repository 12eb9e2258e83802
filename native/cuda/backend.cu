// The CUDA backend on a GPU: backend.h over the CUDA runtime API of this folder, on a stream of its own.
#include <cuda_runtime.h>

#include "backend.h"
#include "check.h"
#include "probe.h"
#include "workspace.h"

namespace lukv {

namespace {

class GpuDevice {
 public:
  GpuDevice() { LUKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  GpuDevice(GpuDevice&& o) noexcept : stream_(o.stream_), ws_(std::move(o.ws_)) { o.stream_ = nullptr; }
  ~GpuDevice() {
    if (ws_) {
      cudaStreamSynchronize(stream_);
      ws_->release();
    }
    if (stream_) cudaStreamDestroy(stream_);
  }
  static const char* name() { return "cuda"; }
  void* alloc(size_t bytes) {
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      throw Error(ErrorCode::OutOfPages, "could not allocate " + std::to_string(bytes) + " bytes of device memory (" +
                                             std::to_string(freeB) + " of " + std::to_string(totalB) + " bytes free)");
    }
    if (e != cudaSuccess) cuda::throwCudaError(e, "cudaMalloc", __FILE__, __LINE__);
    return p;
  }
  void free(void* p) {
    cudaStreamSynchronize(stream_);  // queued work may still read it
    cudaFree(p);
  }
  void toDevice(void* dst, const void* src, size_t bytes) {
    if (bytes) LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void toHost(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    LUKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  bool memInfo(size_t* freeBytes, size_t* totalBytes) {
    LUKV_CUDA_CHECK(cudaMemGetInfo(freeBytes, totalBytes));
    return true;
  }
  void append(const cuda::AppendBatch& b) {
    cuda::AppendBatch x = b;
    x.stream = stream_;
    cuda::append(x, workspace());
  }
  void copyPages(const cuda::PoolView& pool, const std::vector<int32_t>& pairs) {
    cuda::copyPages(pool, pairs, workspace(), stream_);
  }
  void attend(const cuda::AttendBatch& b) {
    cuda::AttendBatch x = b;
    x.stream = stream_;
    cuda::attend(x, workspace());
  }
  void scores(const cuda::ScoreBatch& b) {
    cuda::ScoreBatch x = b;
    x.stream = stream_;
    cuda::scoreHeads(x, workspace());
  }
  void compact(const cuda::PoolView& pool, const std::vector<cuda::CompactHeadInput>& heads) {
    cuda::compactHeads(pool, heads, workspace(), stream_);
  }

 private:
  cuda::Workspace& workspace() {
    if (!ws_) ws_.reset(new cuda::Workspace());
    return *ws_;
  }
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda::Workspace> ws_;
};

}  // namespace

bool cudaBackendUsable(std::string* why) {
  const cuda::ProbeResult r = cuda::probe();
  if (why) *why = r.usable ? "" : r.error;
  return r.usable;
}

std::unique_ptr<Backend> makeCudaBackend(const BackendConfig& config) {
  return std::unique_ptr<Backend>(new cuda::CudaBackend<GpuDevice>(config, GpuDevice()));
}

}  // namespace lukv
