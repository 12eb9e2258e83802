#include "pool.h"

#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "errors.h"

namespace lukv {

PagePool::PagePool(int64_t numPages, int pageSize, int headDim, DType dtype)
    : PageAllocator(numPages), pageSize_(pageSize), headDim_(headDim), dtype_(dtype) {
  rowBytes_ = (size_t)headDim * dtypeBytes(dtype);
  pageBytes_ = 2 * (size_t)pageSize * rowBytes_;
  const size_t total = (size_t)numPages * pageBytes_;  // allocateStreamed rounds it up to whole lines
  data_ = static_cast<uint8_t*>(allocateStreamed(total));
  if (!data_) throw Error(ErrorCode::OutOfPages, "could not allocate the page pool (" + std::to_string(total) + " bytes)");
}

void* allocateStreamed(size_t bytes) {
  // Large anonymous allocations are mapped lazily, so untouched pages cost no resident memory.
  // Buffers of 2 MiB or more are aligned to 2 MiB and offered to the kernel as transparent huge
  // pages: attention streams the pool, and with 4 KiB pages every page of K or V is also a TLB
  // miss and a restart for the hardware prefetchers.
  constexpr size_t kHuge = size_t(2) << 20;
  const bool huge = bytes >= kHuge;
  size_t total = huge ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(huge ? kHuge : 64, total > 0 ? total : 64);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p && huge) madvise(p, total, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
  return p;
}

PagePool::~PagePool() { std::free(data_); }

}  // namespace lukv
