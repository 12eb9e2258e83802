// What the host side of every kernel family needs from the machine it runs on. Two
// implementations: CudaRuntime (runtime.cuh, the real device) and the CPU emulator's runtime in
// native/tests/emu, so that planning, packing and the kernels themselves run the same code in both.
//
//   int smCount();
//   template <class P> int residentBlocks(void (*kernel)(P), int threads);  // per SM
//   const uint8_t* upload(const std::vector<uint8_t>& bytes);   // metadata, valid until the next call
//   uint8_t* scratch(size_t bytes);                             // device scratch, likewise
//   int32_t* counters(size_t count);                            // zero, and left zero by kernels
//   void toDevice(void* dst, const void* src, size_t bytes);    // host -> device, stream-ordered
//   void deviceCopy(void* dst, const void* src, size_t bytes);  // device -> device, stream-ordered
//   template <class P> void launch(void (*kernel)(P), dim3 grid, dim3 block, const P& params, const char* name);
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

typedef struct CUstream_st* cudaStream_t;

namespace lukv {
namespace cuda {

// Packs several host arrays into one buffer so a launch's metadata is one upload.
class Arena {
 public:
  template <class T>
  size_t add(const std::vector<T>& v) {
    return add(v.data(), v.size() * sizeof(T));
  }
  size_t add(const void* p, size_t n) {
    const size_t at = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(at + n);
    if (n) std::memcpy(bytes_.data() + at, p, n);
    return at;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// Carves one scratch allocation into aligned regions.
class ScratchLayout {
 public:
  size_t add(size_t bytes) {
    const size_t at = size_;
    size_ += (bytes + 255) / 256 * 256;
    return at;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

}  // namespace cuda
}  // namespace lukv
