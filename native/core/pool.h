// The page pool: one allocation per cache, fixed-size pages, each holding pageSize tokens of ONE
// (layer, KV head): K rows then V rows. Pages are reference-counted so sequences can share a prefix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dtype.h"
#include "page_allocator.h"

namespace lukv {

// Memory for buffers that are streamed (the page pool, the plain-read baseline): 64-byte aligned,
// and from 2 MiB on 2 MiB-aligned and advised as transparent huge pages. Free with freeStreamed
// and the same size; nullptr when the allocation fails.
void* allocateStreamed(size_t bytes);
void freeStreamed(void* p, size_t bytes);

class PagePool : public PageAllocator {
 public:
  PagePool(int64_t numPages, int pageSize, int headDim, DType dtype);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  int pageSize() const { return pageSize_; }
  int headDim() const { return headDim_; }
  DType dtype() const { return dtype_; }
  size_t pageBytes() const { return pageBytes_; }
  size_t rowBytes() const { return rowBytes_; }

  uint8_t* keys(int32_t page) { return data_ + (size_t)page * pageBytes_; }
  uint8_t* values(int32_t page) { return data_ + (size_t)page * pageBytes_ + (size_t)pageSize_ * rowBytes_; }
  const uint8_t* keys(int32_t page) const { return data_ + (size_t)page * pageBytes_; }
  const uint8_t* values(int32_t page) const { return data_ + (size_t)page * pageBytes_ + (size_t)pageSize_ * rowBytes_; }

  // Gives the memory of the pages no sequence holds back to the system (Linux, pools of 2 MiB or
  // more: the pool's 2 MiB regions whose pages are all free), keeping the pages themselves free for
  // the next appends, which find them zeroed. Returns the bytes that were resident and were given
  // back; 0 elsewhere. The caller holds the lock under which pages are taken (none may be taken
  // meanwhile).
  int64_t releaseFree();

 private:
  int pageSize_, headDim_;
  DType dtype_;
  size_t rowBytes_, pageBytes_, bytes_ = 0;
  uint8_t* data_ = nullptr;
};

}  // namespace lukv
