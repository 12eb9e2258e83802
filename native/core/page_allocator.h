// Page bookkeeping shared by the host pool (core/pool.h) and the device pool (cuda/pool.h): a
// stack of free page ids and a reference count per page. It owns no memory of its own pages.
#pragma once
#include <cstdint>
#include <vector>

namespace lukv {

class PageAllocator {
 public:
  explicit PageAllocator(int64_t numPages) : numPages_(numPages), refs_(numPages, 0) {
    free_.reserve(numPages);
    for (int64_t p = numPages - 1; p >= 0; --p) free_.push_back((int32_t)p);  // lowest ids first
  }

  int64_t numPages() const { return numPages_; }
  int64_t freePages() const { return (int64_t)free_.size(); }
  int64_t usedPages() const { return numPages_ - freePages(); }

  // Takes n pages with refcount 1, or returns false and takes nothing.
  bool allocate(int64_t n, std::vector<int32_t>& out) {
    if (n > (int64_t)free_.size()) return false;
    for (int64_t i = 0; i < n; ++i) {
      const int32_t p = free_.back();
      free_.pop_back();
      refs_[p] = 1;
      out.push_back(p);
    }
    return true;
  }
  void retain(int32_t page) { refs_[page]++; }
  void release(int32_t page) {
    if (--refs_[page] == 0) free_.push_back(page);
  }
  int refcount(int32_t page) const { return refs_[page]; }

 private:
  int64_t numPages_;
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;
};

}  // namespace lukv
