// The device page pool: one cudaMalloc per cache, the same page layout as lukv::PagePool (a page
// holds pageSize K rows then pageSize V rows of ONE (layer, KV head)), so a page can be copied
// between the host and the device byte for byte. Page bookkeeping stays on the host.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/dtype.h"
#include "../core/page_allocator.h"
#include "layout.h"
#include "plan.h"

namespace lukv {
namespace cuda {

class DevicePool : public PageAllocator {
 public:
  // Throws lukv::Error: invalid argument for a head dim the kernels cannot take, out of pages
  // when the device has too little memory, backend unavailable without a usable device.
  DevicePool(int64_t numPages, int pageSize, int headDim, DType dtype);
  ~DevicePool();
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  int pageSize() const { return pageSize_; }
  int headDim() const { return headDim_; }
  DType dtype() const { return dtype_; }
  size_t pageBytes() const { return pageBytes_; }
  size_t rowBytes() const { return rowBytes_; }
  size_t bytes() const { return bytes_; }

  // Device addresses.
  uint8_t* data() const { return data_; }
  uint8_t* keys(int32_t page) const { return data_ + (size_t)page * pageBytes_; }
  uint8_t* values(int32_t page) const { return keys(page) + (size_t)pageSize_ * rowBytes_; }
  PoolView view() const;

 private:
  int pageSize_, headDim_;
  DType dtype_;
  size_t rowBytes_, pageBytes_, bytes_;
  uint8_t* data_ = nullptr;
};

}  // namespace cuda
}  // namespace lukv
