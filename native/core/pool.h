// The page pool: one allocation per cache, fixed-size pages, each holding pageSize tokens of ONE
// (layer, KV head): K rows then V rows. Pages are reference-counted so sequences can share a prefix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dtype.h"

namespace lukv {

class PagePool {
 public:
  PagePool(int64_t numPages, int pageSize, int headDim, DType dtype);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  int64_t numPages() const { return numPages_; }
  int64_t freePages() const { return (int64_t)free_.size(); }
  int64_t usedPages() const { return numPages_ - freePages(); }
  int pageSize() const { return pageSize_; }
  int headDim() const { return headDim_; }
  DType dtype() const { return dtype_; }
  size_t pageBytes() const { return pageBytes_; }
  size_t rowBytes() const { return rowBytes_; }

  // Takes n pages with refcount 1, or returns false and takes nothing.
  bool allocate(int64_t n, std::vector<int32_t>& out);
  void retain(int32_t page) { refs_[page]++; }
  void release(int32_t page);
  int refcount(int32_t page) const { return refs_[page]; }

  uint8_t* keys(int32_t page) { return data_ + (size_t)page * pageBytes_; }
  uint8_t* values(int32_t page) { return data_ + (size_t)page * pageBytes_ + (size_t)pageSize_ * rowBytes_; }
  const uint8_t* keys(int32_t page) const { return data_ + (size_t)page * pageBytes_; }
  const uint8_t* values(int32_t page) const { return data_ + (size_t)page * pageBytes_ + (size_t)pageSize_ * rowBytes_; }

 private:
  int64_t numPages_;
  int pageSize_, headDim_;
  DType dtype_;
  size_t rowBytes_, pageBytes_;
  uint8_t* data_ = nullptr;
  std::vector<int32_t> free_;   // stack of free page ids; lowest ids are handed out first
  std::vector<int32_t> refs_;
};

}  // namespace lukv
