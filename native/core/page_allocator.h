// Page bookkeeping shared by the host pool (core/pool.h) and the device pool (cuda/pool.h): a
// stack of free page ids and a reference count per page. It owns no memory of its own pages.
#pragma once
#include <cstdint>
#include <vector>

namespace lukv {

class PageAllocator {
 public:
  // Nothing is written per page up front: ids never handed out are implicit (the range
  // [fresh_, numPages)), and the reference counts grow with the highest id handed out, so a pool
  // of 2^27 one-token pages costs nothing until it is used.
  explicit PageAllocator(int64_t numPages) : numPages_(numPages) {}

  int64_t numPages() const { return numPages_; }
  int64_t freePages() const { return (int64_t)free_.size() + (numPages_ - fresh_); }
  int64_t usedPages() const { return numPages_ - freePages(); }
  // Pages ever handed out (ids [0, touchedPages)): the part of the pool that has been written.
  int64_t touchedPages() const { return fresh_; }
  // Bytes of this bookkeeping (free stack and reference counts).
  size_t bookkeepingBytes() const { return (free_.capacity() + refs_.capacity()) * sizeof(int32_t); }

  // Takes n pages with refcount 1, or returns false and takes nothing. Returned pages are reused
  // first (last freed first), then fresh ones in increasing id order.
  bool allocate(int64_t n, std::vector<int32_t>& out) {
    if (n > freePages()) return false;
    for (int64_t i = 0; i < n; ++i) {
      int32_t p;
      if (!free_.empty()) {
        p = free_.back();
        free_.pop_back();
      } else {
        p = (int32_t)fresh_++;
        refs_.push_back(0);
      }
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
  // The ids handed out and returned since (in no order): pages no sequence holds.
  const std::vector<int32_t>& returnedPages() const { return free_; }

 private:
  int64_t numPages_;
  int64_t fresh_ = 0;           // next id never handed out
  std::vector<int32_t> free_;   // ids handed out and returned
  std::vector<int32_t> refs_;   // [fresh_]
};

}  // namespace lukv
