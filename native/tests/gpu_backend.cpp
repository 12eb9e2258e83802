// The harness backend on a real GPU: the public CUDA API of native/cuda on its own stream.
#include <cuda_runtime.h>

#include <memory>

#include "../cuda/cache.h"
#include "../cuda/check.h"
#include "harness.h"

namespace lukv {
namespace test {

namespace {

class GpuBackend : public Backend {
 public:
  GpuBackend() { LUKV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~GpuBackend() override {
    pool_.reset();
    ws_.release();
    cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "GPU"; }
  void* alloc(size_t bytes) override {
    void* p = nullptr;
    LUKV_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    LUKV_CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, stream_));
    return p;
  }
  void release(void* p) override {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    sync();
  }
  void download(void* dst, const void* src, size_t bytes) override {
    LUKV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    sync();
  }
  void sync() override { LUKV_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  void newPool(int64_t numPages, int pageSize, int headDim, DType dtype) override {
    sync();
    pool_.reset();
    pool_.reset(new cuda::DevicePool(numPages, pageSize, headDim, dtype));
    // Unused rows hold NaN bytes, as in the emulator: a read of one shows in the results.
    if (pool_->bytes()) LUKV_CUDA_CHECK(cudaMemsetAsync(pool_->data(), 0xFF, pool_->bytes(), stream_));
  }
  cuda::PoolView pool() override { return pool_->view(); }
  void retain(int32_t page) override { pool_->retain(page); }
  int64_t freePages() override { return pool_->freePages(); }

  void appendTokens(HeadState* heads, int kvHeads, int tokens, int32_t pos0, const void* keys, const void* values,
                    InputKind kind) override {
    cuda::appendTokens(*pool_, heads, kvHeads, tokens, pos0, keys, values, kind, ws_, stream_);
  }
  void compact(const std::vector<HeadState*>& heads, const std::vector<std::vector<int32_t>>& kept,
               const std::vector<const float*>& massIn, const std::vector<float*>& massOut) override {
    cuda::compactSequenceHeads(*pool_, heads, kept, massIn, massOut, ws_, stream_);
  }
  void attend(const cuda::AttendBatch& batch, const cuda::AttendOptions& options) override {
    cuda::AttendBatch b = batch;
    b.stream = stream_;
    cuda::attend(b, ws_, options);
  }
  void scores(const cuda::ScoreBatch& batch) override {
    cuda::ScoreBatch b = batch;
    b.stream = stream_;
    cuda::scoreHeads(b, ws_);
  }

 private:
  cudaStream_t stream_ = nullptr;
  cuda::Workspace ws_;
  std::unique_ptr<cuda::DevicePool> pool_;
};

}  // namespace

std::unique_ptr<Backend> makeGpuBackend() { return std::unique_ptr<Backend>(new GpuBackend()); }

}  // namespace test
}  // namespace lukv
