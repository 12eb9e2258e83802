// The runtime interface (native/cuda/runtime.h) for the CPU emulator: "device" memory is host
// memory, launches run the emulated blocks at once, scratch is poisoned with 0xFF bytes (NaN as
// floats) so a read of anything a kernel did not write shows up in the results.
#pragma once
#include <cstring>
#include <deque>
#include <vector>

#include "cuda_emu.h"

namespace lukv {
namespace test {

class EmuRuntime {
 public:
  explicit EmuRuntime(int smCount = 4, int residentBlocks = 2) : sm_(smCount), resident_(residentBlocks) {}
  int smCount() const { return sm_; }
  template <class P>
  int residentBlocks(void (*)(P), int) const {
    return resident_;
  }
  // Exact-size buffers, so AddressSanitizer sees any read past their end.
  const uint8_t* upload(const std::vector<uint8_t>& bytes) {
    if (bytes.empty()) return nullptr;
    keep_.emplace_back(bytes);
    return keep_.back().data();
  }
  uint8_t* scratch(size_t bytes) {
    keep_.emplace_back(bytes, (uint8_t)0xFF);
    return keep_.back().data();
  }
  int32_t* counters(size_t count) {
    keep_.emplace_back(count * sizeof(int32_t), (uint8_t)0);
    counters_ = reinterpret_cast<int32_t*>(keep_.back().data());
    count_ = count;
    return counters_;
  }
  // Kernels must leave the counters at zero.
  bool countersClear() const {
    for (size_t i = 0; i < count_; ++i)
      if (counters_[i] != 0) return false;
    return true;
  }
  void toDevice(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  void deviceCopy(void* dst, const void* src, size_t bytes) { std::memmove(dst, src, bytes); }
  template <class P>
  void launch(void (*kernel)(P), dim3 grid, dim3 block, const P& params, const char*) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    emu::launch(grid, block, [&] { kernel(params); });
  }

 private:
  int sm_, resident_;
  int32_t* counters_ = nullptr;
  size_t count_ = 0;
  std::deque<std::vector<uint8_t>> keep_;  // a deque keeps element addresses stable
};

}  // namespace test
}  // namespace lukv
