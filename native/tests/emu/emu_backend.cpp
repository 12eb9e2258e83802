// The harness backend that runs the CUDA kernels in the CPU emulator: the same planners,
// packing and kernel sources as the GPU build, compiled with g++ (LUKV_CUDA_EMULATE).
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>

#include "../../cuda/attention.cuh"
#include "../../cuda/cache.cuh"
#include "../../cuda/compress.cuh"
#include "../../cuda/scores.cuh"
#include "../../core/page_allocator.h"
#include "../harness.h"
#include "emu_runtime.h"

namespace lukv {
namespace test {

namespace {

// An exact-size host buffer with PagePool's allocator: the emulated kernels address it like
// device memory, and AddressSanitizer sees any access past its end.
class HostPool : public PageAllocator {
 public:
  HostPool(int64_t numPages, int pageSize, int headDim, DType dtype) : PageAllocator(numPages) {
    cuda::checkHeadDim(headDim);
    view_ = cuda::poolView(nullptr, numPages, pageSize, headDim, dtype);
    bytes_.assign((size_t)numPages * view_.pageBytes, 0xFF);
    view_.data = bytes_.data();
  }
  const cuda::PoolView& view() const { return view_; }

 private:
  cuda::PoolView view_;
  std::vector<uint8_t> bytes_;
};

class EmuBackend : public Backend {
 public:
  std::string name() const override { return "CPU emulator"; }
  void* alloc(size_t bytes) override {
    void* p = std::malloc(bytes ? bytes : 1);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0xFF, bytes);
    return p;
  }
  void release(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void sync() override {}

  void newPool(int64_t numPages, int pageSize, int headDim, DType dtype) override {
    std::unique_ptr<HostPool> p(new HostPool(numPages, pageSize, headDim, dtype));
    pool_ = std::move(p);
  }
  cuda::PoolView pool() override { return pool_->view(); }
  void retain(int32_t page) override { pool_->retain(page); }
  int64_t freePages() override { return pool_->freePages(); }

  void appendTokens(HeadState* heads, int kvHeads, int tokens, int32_t pos0, const void* keys, const void* values,
                    InputKind kind) override {
    EmuRuntime rt;
    cuda::runAppendTokens(rt, *pool_, pool_->view(), heads, kvHeads, tokens, pos0, keys, values, kind);
  }
  void compact(const std::vector<HeadState*>& heads, const std::vector<std::vector<int32_t>>& kept,
               const std::vector<const float*>& massIn, const std::vector<float*>& massOut) override {
    EmuRuntime rt;
    cuda::runCompactSequenceHeads(rt, *pool_, pool_->view(), heads, kept, massIn, massOut);
  }
  void attend(const cuda::AttendBatch& batch, const cuda::AttendOptions& options) override {
    EmuRuntime rt;
    cuda::runAttend(rt, batch, options);
    if (!rt.countersClear()) throw std::runtime_error("attention left its split counters non-zero");
  }
  void scores(const cuda::ScoreBatch& batch) override {
    EmuRuntime rt;
    cuda::runScores(rt, batch);
  }

 private:
  std::unique_ptr<HostPool> pool_;
};

}  // namespace

std::unique_ptr<Backend> makeEmuBackend() { return std::unique_ptr<Backend>(new EmuBackend()); }

}  // namespace test
}  // namespace lukv
