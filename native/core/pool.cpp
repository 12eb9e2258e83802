#include "pool.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "errors.h"

namespace lukv {

PagePool::PagePool(int64_t numPages, int pageSize, int headDim, DType dtype)
    : PageAllocator(numPages), pageSize_(pageSize), headDim_(headDim), dtype_(dtype) {
  rowBytes_ = (size_t)headDim * dtypeBytes(dtype);
  pageBytes_ = 2 * (size_t)pageSize * rowBytes_;
  const size_t total = (size_t)numPages * pageBytes_;  // allocateStreamed rounds it up to whole lines
  data_ = static_cast<uint8_t*>(allocateStreamed(total));
  bytes_ = total;
  if (!data_)
    throw Error(ErrorCode::OutOfPages, "could not allocate the page pool (" + std::to_string(total) +
                                           " bytes of host memory): give a smaller maxTokens (or pageSize × pages), or a smaller dtype");
}

namespace {
constexpr size_t kHuge = size_t(2) << 20;
size_t streamedSize(size_t bytes) { return bytes >= kHuge ? (bytes + kHuge - 1) / kHuge * kHuge : (bytes + 63) / 64 * 64; }
}  // namespace

void* allocateStreamed(size_t bytes) {
  // Anonymous memory is mapped lazily, so untouched pages cost no resident memory. Buffers of 2 MiB
  // or more are aligned to 2 MiB and offered to the kernel as transparent huge pages: attention
  // streams the pool, and with 4 KiB pages every page of K or V is also a TLB miss and a restart for
  // the hardware prefetchers. On Linux they are mapped directly (not from the C heap, which may keep
  // a freed block of up to 32 MiB for reuse), so that freeing one gives its memory back at once.
  const size_t total = streamedSize(bytes);
#if defined(__linux__)
  if (bytes >= kHuge) {
    void* m = mmap(nullptr, total + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    // Keep the 2 MiB-aligned part, unmap the slack before and after it.
    const uintptr_t start = reinterpret_cast<uintptr_t>(m), aligned = (start + kHuge - 1) / kHuge * kHuge;
    if (aligned > start) munmap(m, aligned - start);
    if (start + kHuge > aligned) munmap(reinterpret_cast<void*>(aligned + total), start + kHuge - aligned);
    void* p = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
    madvise(p, total, MADV_HUGEPAGE);  // advice only: failure changes nothing
#endif
    return p;
  }
#endif
  return std::aligned_alloc(bytes >= kHuge ? kHuge : 64, total > 0 ? total : 64);
}

void freeStreamed(void* p, size_t bytes) {
  if (!p) return;
#if defined(__linux__)
  if (bytes >= kHuge) {
    munmap(p, streamedSize(bytes));
    return;
  }
#endif
  std::free(p);
}

PagePool::~PagePool() { freeStreamed(data_, bytes_); }

int64_t PagePool::releaseFree() {
#if defined(__linux__)
  if (bytes_ < kHuge) return 0;  // a block of the C heap (see allocateStreamed): left to it
  // Whole 2 MiB regions of the pool (its huge pages) whose every page is free are given back. A
  // smaller run would be given back only for a while: the kernel's huge-page merging (khugepaged)
  // refills a 2 MiB region that still holds one page in use, seconds later. Pages never handed out
  // were never written, so only the regions up to the last page handed out can hold memory.
  const int64_t touched = touchedPages();
  if (touched == 0) return 0;
  std::vector<bool> isFree((size_t)touched, false);
  for (int32_t id : returnedPages()) isFree[(size_t)id] = true;
  const uintptr_t base = reinterpret_cast<uintptr_t>(data_);
  const uintptr_t os = (uintptr_t)sysconf(_SC_PAGESIZE);
  const int64_t regions = (int64_t)(((size_t)touched * pageBytes_ + kHuge - 1) / kHuge);
  std::vector<unsigned char> resident(kHuge / os);
  int64_t released = 0;
  for (int64_t r = 0; r < regions; ++r) {
    // The pool pages overlapping [r, r + 1) x 2 MiB must all be free (or never handed out).
    const int64_t first = (int64_t)((size_t)r * kHuge / pageBytes_);
    const int64_t last = std::min<int64_t>(touched, (int64_t)(((size_t)(r + 1) * kHuge + pageBytes_ - 1) / pageBytes_));
    bool allFree = true;
    for (int64_t p = first; p < last && allFree; ++p) allFree = isFree[(size_t)p];
    if (!allFree) continue;
    void* at = reinterpret_cast<void*>(base + (size_t)r * kHuge);
    int64_t bytes = 0;
    if (mincore(at, kHuge, resident.data()) == 0)
      for (unsigned char c : resident) bytes += (c & 1) ? (int64_t)os : 0;
    if (bytes > 0 && madvise(at, kHuge, MADV_DONTNEED) == 0) released += bytes;
  }
  return released;
#else
  return 0;
#endif
}

}  // namespace lukv
