// The CUDA backend on a GPU: backend.h over the CUDA runtime API of this folder, on a stream of its own.
#include <cuda_runtime.h>

#include "backend.h"
#include "check.h"
#include "probe.h"
#include "workspace.h"

namespace lukv {

namespace {

// Makes `device` the calling thread's current device for one call and gives the thread its earlier
// device back after it. A cache's memory, stream and kernels belong to the device that was current
// where the cache was made; its calls run on the JS thread and on the libuv pool's threads, whose
// current device is whatever the last CUDA code on that thread chose (another library's, or 0).
class OnDevice {
 public:
  // `quiet`: in a destructor, where a throw would end the process, a failure leaves the device as it is.
  explicit OnDevice(int device, bool quiet = false) {
    const char* call = "cudaGetDevice";
    cudaError_t e = cudaGetDevice(&previous_);
    if (e == cudaSuccess && previous_ != device) {
      call = "cudaSetDevice";
      e = cudaSetDevice(device);
      restore_ = e == cudaSuccess;
    }
    if (e == cudaSuccess) return;
    cudaGetLastError();  // not left behind for a later launch check to report
    if (!quiet) cuda::throwCudaError(e, call, __FILE__, __LINE__);
  }
  ~OnDevice() {
    if (restore_ && cudaSetDevice(previous_) != cudaSuccess) cudaGetLastError();
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  int previous_ = 0;
  bool restore_ = false;
};

class GpuDevice {
 public:
  GpuDevice() {
    LUKV_CUDA_CHECK(cudaGetDevice(&device_));
    LUKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  GpuDevice(GpuDevice&& o) noexcept : device_(o.device_), stream_(o.stream_), ws_(std::move(o.ws_)) {
    o.stream_ = nullptr;
  }
  ~GpuDevice() {
    if (!stream_ && !ws_) return;
    OnDevice on(device_, true);
    if (ws_) {
      cudaStreamSynchronize(stream_);
      ws_->release();
    }
    if (stream_) cudaStreamDestroy(stream_);
    cudaGetLastError();
  }
  static const char* name() { return "cuda"; }
  void* alloc(size_t bytes) {
    OnDevice on(device_);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 16);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      throw Error(ErrorCode::OutOfMemory, "could not allocate " + std::to_string(bytes) + " bytes of device memory (" +
                                             std::to_string(freeB) + " of " + std::to_string(totalB) + " bytes free)");
    }
    if (e != cudaSuccess) cuda::throwCudaError(e, "cudaMalloc", __FILE__, __LINE__);
    return p;
  }
  void free(void* p) {  // called from destructors: never throws
    OnDevice on(device_, true);
    cudaStreamSynchronize(stream_);  // queued work may still read it
    cudaFree(p);
    cudaGetLastError();  // a failure here is not left for a later launch check to report
  }
  void toDevice(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    OnDevice on(device_);
    LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void toHost(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    OnDevice on(device_);
    LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    LUKV_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  bool memInfo(size_t* freeBytes, size_t* totalBytes) {
    OnDevice on(device_);
    LUKV_CUDA_CHECK(cudaMemGetInfo(freeBytes, totalBytes));
    return true;
  }
  void append(const cuda::AppendBatch& b) {
    OnDevice on(device_);
    cuda::AppendBatch x = b;
    x.stream = stream_;
    cuda::append(x, workspace());
  }
  void copyPages(const cuda::PoolView& pool, const std::vector<int32_t>& pairs) {
    OnDevice on(device_);
    cuda::copyPages(pool, pairs, workspace(), stream_);
  }
  void attend(const cuda::AttendBatch& b) {
    OnDevice on(device_);
    cuda::AttendBatch x = b;
    x.stream = stream_;
    cuda::attend(x, workspace());
  }
  void scores(const cuda::ScoreBatch& b) {
    OnDevice on(device_);
    cuda::ScoreBatch x = b;
    x.stream = stream_;
    cuda::scoreHeads(x, workspace());
  }
  void compact(const cuda::PoolView& pool, const std::vector<cuda::CompactHeadInput>& heads) {
    OnDevice on(device_);
    cuda::compactHeads(pool, heads, workspace(), stream_);
  }

 private:
  cuda::Workspace& workspace() {
    if (!ws_) ws_.reset(new cuda::Workspace());
    return *ws_;
  }
  int device_ = 0;
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
