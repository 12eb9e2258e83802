// Device buffers reused across calls on one stream: launch metadata and scratch (split-K
// partials, raw scores). They only grow; freeing waits for the device, so reuse is safe.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lukv {
namespace cuda {

class Workspace {
 public:
  Workspace() = default;
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  uint8_t* meta(size_t bytes) { return grow(meta_, bytes); }
  uint8_t* scratch(size_t bytes) { return grow(scratch_, bytes); }
  // Zeroed when (re)allocated; kernels that use them leave them zero.
  int32_t* counters(size_t count);
  size_t bytes() const { return meta_.size + scratch_.size + counters_.size; }
  void release();

 private:
  struct Buffer {
    uint8_t* ptr = nullptr;
    size_t size = 0;
  };
  uint8_t* grow(Buffer& b, size_t bytes);
  Buffer meta_, scratch_, counters_;
};

}  // namespace cuda
}  // namespace lukv
